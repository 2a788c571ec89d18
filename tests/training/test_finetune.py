"""Fine-tuning in one command: from a kan_zoo export folder, offline, new head, frozen backbone, layer decay."""
from __future__ import annotations

import csv
import math
from argparse import Namespace

import pytest
import torch
from accelerate.state import AcceleratorState, GradientState, PartialState
from safetensors.torch import load_file

from kan_zoo.training import ModelError
from kan_zoo.training.checkpoint import list_checkpoints
from kan_zoo.training.run import main

MODEL = "kan_test_vgg_gram"


def _reset():
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    PartialState._reset_state()


def _args(folder, out, *extra):
    return ["--dataset", str(folder), "--model", MODEL, "--img-size", "16", "--epochs", "1", "--batch-size", "4",
            "--grad-accum", "1", "--workers", "0", "--warmup-steps", "1", "--lr", "1e-2", "--log-every", "1",
            "--no-progress", "--output", str(out), "--cache-dir", str(out.parent / "hf_cache"), *extra]


@pytest.fixture(scope="module")
def exported(tiny_folder, tmp_path_factory):
    """A briefly trained 3-class model, exported by train_imagenet.py itself."""
    out = tmp_path_factory.mktemp("pretrain") / "run"
    main(_args(tiny_folder, out, "--checkpoint-steps", "0"))
    _reset()
    return out / "export"


@pytest.fixture
def two_classes(two_class_folder):
    return two_class_folder


def test_frozen_backbone_finetune_changes_only_the_head(exported, two_classes, tmp_path):
    out = tmp_path / "ft"
    result = main(_args(two_classes, out, "--pretrained-path", str(exported), "--num-classes", "2", "--reset-head",
                        "--freeze-backbone", "--epochs", "2", "--checkpoint-steps", "1", "--keep-checkpoints", "10",
                        "--export-weights", "model"))
    source = load_file(str(exported / "model.safetensors"))
    first, last = list_checkpoints(out)[0], list_checkpoints(out)[-1]
    assert first.name == "step_000000001" and last.name == "step_000000008"
    tuned = load_file(str(out / "export" / "model.safetensors"))
    early = load_file(str(first / "model.safetensors"))
    head = {"head.fc.weight", "head.fc.bias"}
    assert tuned.keys() == source.keys()
    # backbone: weights AND norm running statistics are the pretrained ones (frozen norms stay in eval)
    for k in source.keys() - head:
        torch.testing.assert_close(tuned[k], source[k], rtol=0, atol=0, msg=k)
    assert tuned["head.fc.weight"].shape == (2, source["head.fc.weight"].shape[1])
    assert not torch.equal(tuned["head.fc.weight"], early["head.fc.weight"])  # the head trained
    groups = result["optimizer_groups"]
    assert sum(g["params"] for g in groups) == tuned["head.fc.weight"].numel() + 2
    rows = [r for r in csv.DictReader(open(out / "logs" / "train" / "metrics.csv")) if r.get("train/loss")]
    assert rows and all(math.isfinite(float(r["train/loss"])) for r in rows)
    assert math.isfinite(result["metrics"]["val/loss"])


def test_layer_decay_lowers_lr_toward_the_stem(exported, two_classes, tmp_path):
    result = main(_args(two_classes, tmp_path / "ld", "--pretrained-path", str(exported), "--reset-head",
                        "--layer-decay", "0.5", "--sched", "cosine", "--checkpoint-steps", "0"))
    scales = sorted({g["lr_scale"] for g in result["optimizer_groups"]})
    # kan_test_vgg_gram: stem features.0, blocks features.2 / features.4, then the head
    assert scales == pytest.approx([0.125, 0.25, 0.5, 1.0])
    for g in result["optimizer_groups"]:
        assert g["lr"] == pytest.approx(result["optimizer_groups"][-1]["lr"] * g["lr_scale"])

    import timm
    from timm.optim import create_optimizer_v2

    from kan_zoo.training.aids import optimizer_params

    model = timm.create_model(MODEL, num_classes=2)
    args = Namespace(model=MODEL, layer_decay=0.5, basis_lr_mult=1.0, basis_wd_mult=1.0)
    assert optimizer_params(model, args) is model  # timm builds the layer groups itself
    opt = create_optimizer_v2(model, opt="adamw", lr=1.0, layer_decay=0.5)
    scale = {id(p): g["lr_scale"] for g in opt.param_groups for p in g["params"]}
    named = dict(model.named_parameters())
    order = ["features.0.weight", "features.2.weight", "features.4.weight", "head.fc.weight"]
    assert [scale[id(named[n])] for n in order] == sorted(scale[id(named[n])] for n in order)
    assert scale[id(named["features.0.weight"])] < scale[id(named["head.fc.weight"])] == 1.0


def test_finetune_errors_come_early(exported, two_classes, tmp_path):
    from torch import nn

    from kan_zoo.training.aids import freeze_backbone, optimizer_params

    # the existing head rule: a 3-class export on 2-class data needs --reset-head
    with pytest.raises(ModelError, match="pretrained head of .* has 3 classes but the data has 2; pass --reset-head"):
        main(_args(two_classes, tmp_path / "a", "--pretrained-path", str(exported), "--freeze-backbone"))
    assert not (tmp_path / "a" / "checkpoints").exists()
    _reset()
    with pytest.raises(ModelError, match="holds a 'kan_test_vgg_gram', not --model 'kan_test_vgg_rbf'"):
        main(_args(two_classes, tmp_path / "b", "--pretrained-path", str(exported), "--reset-head",
                   "--model", "kan_test_vgg_rbf"))
    _reset()
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelError, match="holds no model.safetensors"):
        main(_args(two_classes, tmp_path / "c", "--pretrained-path", str(empty)))
    with pytest.raises(ModelError, match="--freeze-backbone needs a model with get_classifier"):
        freeze_backbone(nn.Sequential(nn.Linear(2, 2)))
    with pytest.raises(ModelError, match="--layer-decay needs a model with group_matcher"):
        optimizer_params(nn.Sequential(nn.Linear(2, 2)), Namespace(model="plain", layer_decay=0.7,
                                                                   basis_lr_mult=1.0, basis_wd_mult=1.0))
