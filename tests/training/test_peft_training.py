"""train_imagenet.py --peft-*: a PEFT fine-tune trains only its adapters, norms and head, and exports the merged
plain model of the higher degree, which timm reloads."""
from __future__ import annotations

from argparse import Namespace

import pytest
import timm
import torch
from safetensors.torch import load_file

from kan_zoo.training import ModelError
from kan_zoo.training.config import ConfigError, parse_args
from kan_zoo.training.modeling import apply_peft
from kan_zoo.training.run import main

MODEL = "kan_test_vgg_gram"  # gram degree 5: weight blocks base, P_0..P_5


def _args(folder, out, *extra):
    return ["--dataset", str(folder), "--model", MODEL, "--img-size", "16", "--epochs", "1", "--batch-size", "4",
            "--grad-accum", "1", "--workers", "0", "--warmup-steps", "1", "--lr", "1e-2", "--log-every", "1",
            "--no-progress", "--checkpoint-steps", "0", "--output", str(out),
            "--cache-dir", str(out.parent / "hf_cache"), *extra]


@pytest.fixture(scope="module")
def exported(tiny_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("peft_pretrain") / "run"
    main(_args(tiny_folder, out))
    return out / "export"


def test_peft_run_exports_the_merged_model(exported, two_class_folder, tmp_path, capsys):
    out = tmp_path / "peft"
    main(_args(two_class_folder, out, "--pretrained-path", str(exported), "--reset-head", "--peft-extra-degrees", "1",
               "--peft-trainable-degrees", "0", "--export-weights", "model"))
    printed = capsys.readouterr().out
    # adapters (P_0 delta + P_6: 2 blocks) + one new beta per layer + BatchNorm affine + the 2-class head
    trainable = 2 * 9 * (8 * 3 + 16 * 8 + 32 * 16) + 3 + 2 * (8 + 16 + 32) + 32 * 2 + 2
    assert f"({trainable / 1e6:.4f}M trainable)" in printed
    source = load_file(str(exported / "model.safetensors"))
    tuned = load_file(str(out / "export" / "model.safetensors"))
    assert tuned.keys() == source.keys()  # a plain model: no adapter keys
    for i, c in ((0, 3), (2, 8), (4, 16)):
        old, new = source[f"features.{i}.weight"], tuned[f"features.{i}.weight"]
        assert new.shape == (old.shape[0], old.shape[1] + c) + old.shape[2:]  # one more degree
        assert torch.equal(new[:, 2 * c:old.shape[1]], old[:, 2 * c:])  # base, P_1..P_5 stayed frozen
        assert not torch.equal(new[:, c:2 * c], old[:, c:2 * c])  # P_0 took its delta
        assert new[:, old.shape[1]:].abs().sum() > 0  # P_6 trained from zero
    reloaded = timm.create_model(f"local-dir:{out / 'export'}", pretrained=True).eval()
    assert reloaded.features[0].basis.degree == 6 and reloaded.num_classes == 2


def test_peft_flags_are_checked_before_training(exported, tmp_path):
    base = ["--dataset", "x", "--model", MODEL]
    with pytest.raises(ConfigError, match="--peft-train-base / --no-peft-train-norms need"):
        parse_args(base + ["--peft-train-base"])
    with pytest.raises(ConfigError, match="fine-tunes pretrained weights"):
        parse_args(base + ["--peft-extra-degrees", "1"])
    with pytest.raises(ConfigError, match="--freeze-backbone and --peft"):
        parse_args(base + ["--pretrained-path", str(exported), "--peft-extra-degrees", "1", "--freeze-backbone"])
    with pytest.raises(ConfigError, match="--peft-extra-degrees must be >= 0"):
        parse_args(base + ["--pretrained-path", str(exported), "--peft-extra-degrees", "-1"])
    args = Namespace(model="kan_test_vgg_bspline", peft_extra_degrees=1, peft_trainable_degrees=None,
                     peft_train_base=False, peft_train_norms=True)
    with pytest.raises(ModelError, match="--peft-\\* on 'kan_test_vgg_bspline': .*bspline basis"):
        apply_peft(timm.create_model("kan_test_vgg_bspline"), args)
