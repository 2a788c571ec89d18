"""train_imagenet.py with mixture-of-experts KAN layers: the load-balancing loss joins the loss, logged apart."""
from __future__ import annotations

import csv

import pytest
import torch

from kan_zoo.layers import MoEKANConv2d
from kan_zoo.training import run, setup
from kan_zoo.training.config import ConfigError


def _args(folder, out, *extra):
    return ["--dataset", str(folder), "--model", "kan_test_vgg_gram", "--img-size", "16", "--epochs", "1",
            "--batch-size", "6", "--grad-accum", "1", "--workers", "0", "--warmup-steps", "1", "--lr", "3e-3",
            "--log-every", "1", "--checkpoint-steps", "0", "--no-progress", "--output", str(out),
            "--cache-dir", str(out.parent / "hf_cache"), *extra]


@pytest.fixture
def moe_model(monkeypatch):
    """kan_test_vgg_gram with its second KAN conv (8 -> 16) replaced by a mixture of 4 such experts."""
    built = []

    def create_model(args, num_classes, in_chans):
        model = original(args, num_classes, in_chans)
        model.features[2] = MoEKANConv2d(8, 16, 3, padding=1, num_experts=4, top_k=2)
        built.append(model)
        return model

    original = setup.create_model  # what data_and_model() calls
    monkeypatch.setattr(setup, "create_model", create_model)
    return built


def _train_rows(out):
    rows = csv.DictReader(open(out / "logs" / "train" / "metrics.csv"))
    return [r for r in rows if r.get("train/loss")]


def test_moe_load_balancing_loss_is_weighted_logged_and_trained(tiny_folder, tmp_path, moe_model):
    out = tmp_path / "run"
    run.main(_args(tiny_folder, out, "--moe-aux-weight", "0.5"))
    rows = _train_rows(out)
    assert len(rows) == 6  # 36 readable images / batch 6, logged every update
    term = [float(r["train/reg_moe_aux"]) for r in rows]
    task = [float(r["train/loss"]) for r in rows]
    assert all(t > 0 for t in term)  # noisy routing of 6 samples over 4 experts is never exactly balanced
    for r, t, loss in zip(rows, term, task):
        assert float(r["train/loss_total"]) == pytest.approx(loss + t, rel=1e-6)
    moe = moe_model[0].features[2]
    # the gate starts at zero (Shazeer et al.); the task loss and the balancing loss moved it
    assert moe.w_gate.abs().sum() > 0 and moe.w_noise.abs().sum() > 0


def test_zero_weight_leaves_the_loss_alone(tiny_folder, tmp_path, moe_model):
    out = tmp_path / "run"
    run.main(_args(tiny_folder, out, "--moe-aux-weight", "0", "--no-model-ema"))
    rows = _train_rows(out)
    assert rows and not any(k.startswith("train/reg_") for k in rows[0])
    assert torch.isfinite(moe_model[0].features[2].aux_loss)  # computed by the layer, just not added


def test_negative_weight_is_refused():
    with pytest.raises(ConfigError, match="moe-aux-weight"):
        from kan_zoo.training.config import parse_args

        parse_args(["--model", "kan_test_vgg_gram", "--moe-aux-weight", "-1"])
