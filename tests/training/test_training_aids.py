"""KAN training aids through train_imagenet.py: regularisers, basis parameter groups, grid refits."""
from __future__ import annotations

import csv
import json
import math
from argparse import Namespace

import pytest
import torch
from accelerate.state import AcceleratorState, GradientState, PartialState
from safetensors.torch import load_file

from kan_zoo.training import ConfigError
from kan_zoo.training.checkpoint import list_checkpoints
from kan_zoo.training.run import SimulatedKill, main


def _reset():
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    PartialState._reset_state()


def _args(folder, out, model, *extra):
    return ["--dataset", str(folder), "--model", model, "--img-size", "16", "--epochs", "2", "--batch-size", "6",
            "--grad-accum", "1", "--workers", "0", "--warmup-steps", "1", "--lr", "3e-3", "--log-every", "1",
            "--checkpoint-steps", "0", "--no-progress", "--output", str(out),
            "--cache-dir", str(out.parent / "hf_cache"), *extra]


def _train_rows(out):
    rows = csv.DictReader(open(out / "logs" / "train" / "metrics.csv"))
    return [r for r in rows if r.get("train/loss")]


@pytest.mark.parametrize("flag, weight", [("smoothness", 10.0), ("l1_weights", 1.0), ("act_l1", 5.0),
                                          ("act_l2", 5.0)])
def test_regularizer_is_logged_apart_from_task_loss_and_decreases(tiny_folder, tmp_path, flag, weight):
    out = tmp_path / "run"
    main(_args(tiny_folder, out, "kan_test_vgg_gram", f"--reg-{flag.replace('_', '-')}", str(weight),
               "--no-model-ema"))
    rows = _train_rows(out)
    assert len(rows) == 12  # 36 readable images / batch 6 = 6 updates per epoch, logged each
    key = f"train/reg_{flag}"
    # only the requested term is there
    others = {f"train/reg_{n}" for n in ("smoothness", "l1_weights", "act_l1", "act_l2")} - {key}
    assert key in rows[0] and not others & set(rows[0])
    term = [float(r[key]) for r in rows]
    task = [float(r["train/loss"]) for r in rows]
    assert all(math.isfinite(v) and v > 0 for v in term + task)
    # train/loss is the task loss alone; the total adds the (already weighted) term
    for r, t, l in zip(rows, term, task):
        assert float(r["train/loss_total"]) == pytest.approx(l + t, rel=1e-6)
    assert sum(term[-4:]) < sum(term[:4])  # the optimizer pushes the penalty down


def test_basis_multipliers_reach_optimizer_groups(tiny_folder, tmp_path):
    result = main(_args(tiny_folder, tmp_path / "run", "kan_test_vgg_gram", "--basis-lr-mult", "0.25",
                        "--basis-wd-mult", "4", "--weight-decay", "0.01", "--epochs", "1", "--sched", "cosine"))
    groups = {g["name"]: g for g in result["optimizer_groups"]}
    assert set(groups) == {"basis", "basis_no_decay", "other", "other_no_decay"}
    # scheduled lr times lr_scale: the ratio holds whatever point of the schedule we stop at
    assert groups["basis"]["lr"] == pytest.approx(0.25 * groups["other"]["lr"])
    assert groups["basis_no_decay"]["lr"] == pytest.approx(0.25 * groups["other_no_decay"]["lr"])
    assert groups["other"]["lr"] > 0
    assert groups["basis"]["weight_decay"] == pytest.approx(0.04)
    assert groups["other"]["weight_decay"] == pytest.approx(0.01)
    assert groups["basis_no_decay"]["weight_decay"] == groups["other_no_decay"]["weight_decay"] == 0
    # the logged lr is the scheduler's, not a scaled group's
    rows = _train_rows(tmp_path / "run")
    assert float(rows[-1]["train/lr"]) == pytest.approx(groups["other"]["lr"], rel=1e-4)


def test_basis_multiplier_combines_with_layer_decay():
    import timm
    import kan_zoo  # noqa: F401
    from kan_zoo.training.aids import optimizer_params

    model = timm.create_model("kan_test_vgg_gram", num_classes=3)
    args = Namespace(model="kan_test_vgg_gram", basis_lr_mult=0.5, basis_wd_mult=1.0, weight_decay=0.01,
                     layer_decay=0.5)
    groups = optimizer_params(model, args)
    scale = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    named = dict(model.named_parameters())
    # basis coefficients: 0.5 x the layer's factor (stem 0.125, then 0.25, 0.5; head 1)
    assert scale[id(named["features.0.weight"])] == pytest.approx(0.5 * 0.125)
    assert scale[id(named["features.4.weight"])] == pytest.approx(0.5 * 0.5)
    assert scale[id(named["features.0.norm.weight"])] == pytest.approx(0.125)
    assert scale[id(named["head.fc.weight"])] == pytest.approx(1.0)
    assert sum(len(g["params"]) for g in groups) == len(named)


@pytest.mark.parametrize("model", ["kan_test_vgg_rbf", "kan_test_vgg_bspline"])
def test_grid_refits_during_training_keep_the_model_finite(tiny_folder, tmp_path, capsys, model):
    result = main(_args(tiny_folder, tmp_path / "run", model, "--grid-update-every", "2"))
    # the refitted grids (rbf widths included) are in the export's state_dict: no side file, no warning
    assert "warning: the grid refits" not in capsys.readouterr().out
    assert not (tmp_path / "run" / "export" / "grid_state.json").exists()
    assert result["grid_refits"] == 6  # updates 2, 4, ..., 12
    m = result["metrics"]
    assert all(math.isfinite(m[k]) for k in ("val/loss", "val_ema/loss"))
    # the last refit (update 12, the last) restarted the EMA from the model, grid attributes included
    assert m["val_ema/loss"] == pytest.approx(m["val/loss"], rel=1e-5)
    assert m["val_ema/top1"] == m["val/top1"]
    rows = _train_rows(tmp_path / "run")
    assert all(math.isfinite(float(r["train/loss"])) for r in rows)
    assert rows[-1]["train/grid_refits"] == "6"


def test_grown_grid_run_resumes_exactly(tiny_folder, tmp_path):
    # relu basis: trainable phases and the bell scale buffer are replaced by each growth
    extra = ["--grid-update-every", "2", "--grid-grow", "1", "--grid-max-size", "7", "--checkpoint-steps", "2",
             "--keep-checkpoints", "2", "--model-ema-decay", "0.9"]
    main(_args(tiny_folder, tmp_path / "full", "kan_test_vgg_relu", *extra))
    _reset()
    with pytest.raises(SimulatedKill):
        main(_args(tiny_folder, tmp_path / "killed", "kan_test_vgg_relu", *extra, "--crash-after-steps", "7"))
    assert list_checkpoints(tmp_path / "killed")[-1].name == "step_000000006"
    _reset()
    resumed = main(_args(tiny_folder, tmp_path / "killed", "kan_test_vgg_relu", *extra, "--resume"))
    assert all(math.isfinite(v) for v in (resumed["metrics"]["val/loss"], resumed["metrics"]["val_ema/loss"]))
    last = list_checkpoints(tmp_path / "full")[-1]
    again = tmp_path / "killed" / "checkpoints" / last.name
    grid = json.loads((again / "grid_state.json").read_text())
    assert grid == json.loads((last / "grid_state.json").read_text())
    assert {v["grid_size"] for v in grid.values()} == {7}  # grew from 5, capped
    for name in ("model.safetensors", "ema.safetensors"):
        a, b = load_file(str(last / name)), load_file(str(again / name))
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)


def test_grid_flags_refused_where_they_cannot_work(tiny_folder, tmp_path):
    import timm
    from kan_zoo.training.aids import GridRefresher

    with pytest.raises(ConfigError, match="needs KAN layers with a grid"):
        main(_args(tiny_folder, tmp_path / "a", "kan_test_vgg_gram", "--grid-update-every", "2"))
    _reset()
    with pytest.raises(ConfigError, match="--reg-\\* flags need KAN layers"):
        main(_args(tiny_folder, tmp_path / "b", "test_resnet", "--reg-smoothness", "1"))
    args = Namespace(model="kan_test_vgg_rbf", grid_update_every=2, grid_grow=1, grid_max_size=None, grid_eps=0.02)
    two_procs = Namespace(num_processes=2, gather=lambda t: t)
    with pytest.raises(ConfigError, match="--grid-grow replaces parameters"):
        GridRefresher(args, two_procs, timm.create_model("kan_test_vgg_rbf", num_classes=3))


def test_cpu_kernels_flag_trains_like_the_eager_path_and_is_put_back(tiny_folder, tmp_path, monkeypatch):
    from kan_zoo.layers import cpu_kernels_enabled
    from kan_zoo.layers.kernels import cpu_kernels, switches

    monkeypatch.setattr(switches.NATIVE_KERNELS, "enabled", False)  # the wavelet chunks would take the C kernels
    calls = []
    compiled = cpu_kernels.run_compiled
    monkeypatch.setattr(cpu_kernels, "run_compiled", lambda kernel, *a: calls.append(kernel) or compiled(kernel, *a))
    losses = {}
    for flag in ("--no-cpu-kernels", "--cpu-kernels"):
        _reset()
        out = tmp_path / flag
        main(_args(tiny_folder, out, "kan_test_vgg_wavelet", "--no-model-ema", "--epochs", "1", flag))
        losses[flag] = [float(r["train/loss"]) for r in _train_rows(out)]
        assert bool(calls) == (flag == "--cpu-kernels") and not cpu_kernels._FAILED  # compiled, not fallen back
        assert cpu_kernels_enabled() is False  # the run switched them back off
    # the wavelet node's compiled chunks against its eager chunks: the same training up to float rounding
    assert len(losses["--cpu-kernels"]) == 6
    assert losses["--cpu-kernels"] == pytest.approx(losses["--no-cpu-kernels"], rel=1e-4)
