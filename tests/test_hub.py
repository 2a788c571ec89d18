"""kan_zoo.hub: export, reload (local-dir, hf-hub via an offline cache, transformers), push, errors, CLI.

Everything runs offline: hf-hub loads read a cache the tests build, uploads go to a FakeHfApi.
Round trips compare outputs of the reloaded model against the original, not stored numbers.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors
import safetensors.torch
import timm
import torch
from torch import nn

import kan_zoo  # noqa: F401  registers kan_* models
import kan_zoo.hub as hub
from hub_helpers import FakeHfApi, build_local_hf_cache, repo_cache_folder, use_local_hf_cache
from hub_helpers import local_hf_cache  # noqa: F401  (a fixture: importing it makes pytest see it)
from kan_zoo.hub import (
    CheckpointMismatchError,
    CorruptCheckpointError,
    HubFileNotCachedError,
    UnknownModelError,
    create_pretrained_model,
    export_to_folder,
    load_checkpoint_strict,
    push_to_hub,
)
from kan_zoo.hub._cli import main as cli_main

KAN_MODELS = set(timm.list_models("kan_*"))


def _kan_param(name: str, num_classes: int):
    # The kan_* test models are written alongside this module: skip, saying why, until they are registered.
    return pytest.param((name, {"num_classes": num_classes}), id=name, marks=pytest.mark.skipif(
        name not in KAN_MODELS, reason=f"{name} is not registered (not in timm.list_models('kan_*'))"))


# (timm name, create_model kwargs). test_* are timm's own tiny models: one conv net, one fixed-size ViT;
# the KAN ones cover a plain stack (gram) and a residual net whose bspline basis keeps a grid buffer.
MODELS = [
    pytest.param(("test_resnet", {"num_classes": 5}), id="test_resnet"),
    pytest.param(("test_vit", {"num_classes": 3}), id="test_vit"),
    _kan_param("kan_test_vgg_gram", 4),
    _kan_param("kan_test_resnet_bspline", 4),
]
REPO = "kan-org/tiny-model"
FILES = ("model.safetensors", "config.json", "README.md")


def _randomise(model: nn.Module) -> nn.Module:
    """Move every parameter and norm statistic off its init value, so a reload that misses one shows."""
    gen = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
        for name, b in model.named_buffers():
            # norm statistics only: other buffers (e.g. a spline's knot grid) must keep their structure
            if name.endswith("running_mean"):
                b.copy_(0.1 * torch.randn(b.shape, generator=gen))
            elif name.endswith("running_var"):
                b.copy_(0.5 + torch.rand(b.shape, generator=gen))
    return model.eval()


def _input(model: nn.Module, batch: int = 2) -> torch.Tensor:
    c, h, w = model.pretrained_cfg["input_size"]
    if not model.pretrained_cfg.get("fixed_input_size", False):
        h, w = min(h, 32), min(w, 32)  # flexible models: a small image keeps the test fast
    return torch.randn(batch, c, h, w, generator=torch.Generator().manual_seed(7))


@torch.no_grad()
def _assert_same_outputs(a: nn.Module, b: nn.Module, x: torch.Tensor) -> None:
    ya, yb = a.eval()(x), b.eval()(x)
    torch.testing.assert_close(yb, ya, rtol=1e-6, atol=1e-6)


@pytest.fixture(scope="module", params=MODELS)
def exported(request, tmp_path_factory):
    """(model, input, folder): a randomised model exported once per parametrised architecture."""
    name, kwargs = request.param
    torch.manual_seed(0)
    model = _randomise(timm.create_model(name, **kwargs))
    folder = export_to_folder(model, tmp_path_factory.mktemp(name) / "export", repo_id=REPO,
                              metrics={"top1": 12.5, "eval_loss": 2.25})
    return model, _input(model), folder


# --- the exported files -------------------------------------------------------------------------------

def test_export_writes_timm_format(exported):
    model, _, folder = exported
    assert sorted(p.name for p in folder.iterdir()) == sorted(FILES)
    config = json.loads((folder / "config.json").read_text())
    assert config["architecture"] == model.pretrained_cfg["architecture"]
    assert config["num_classes"] == model.num_classes == config["pretrained_cfg"]["num_classes"]
    assert config["num_features"] == model.num_features
    # transformers' TimmWrapper passes num_classes itself: it must not be in model_args too
    assert "num_classes" not in config.get("model_args", {})
    for stale in ("url", "hf_hub_id", "hf_hub_filename", "file", "source", "tag", "state_dict"):
        assert stale not in config["pretrained_cfg"]

    with safetensors.safe_open(str(folder / "model.safetensors"), "pt") as f:
        assert f.metadata() == {"format": "pt"}
        assert set(f.keys()) == set(model.state_dict())
        for key, value in model.state_dict().items():
            assert torch.equal(f.get_tensor(key), value), key


def test_model_card_content(exported):
    model, _, folder = exported
    card = (folder / "README.md").read_text()
    arch = model.pretrained_cfg["architecture"]
    assert card.startswith("---\n") and "library_name: timm" in card and "license:" in card
    assert f"`{arch}`" in card
    assert f"{sum(p.numel() for p in model.parameters()):,}" in card
    assert "| top1 | 12.5 |" in card and "| eval_loss | 2.25 |" in card
    assert f'timm.create_model("hf-hub:{REPO}", pretrained=True)' in card
    assert "arXiv:2404.19756" in card and "arXiv:2407.01092" in card  # KAN and KAN-convolution papers
    if arch.startswith("kan_"):
        assert "KAN layers:" in card


# --- loading round trips ---------------------------------------------------------------------------------

def test_round_trip_local_dir(exported):
    model, x, folder = exported
    reloaded = timm.create_model(f"local-dir:{folder}", pretrained=True)
    assert type(reloaded) is type(model) and reloaded.num_classes == model.num_classes
    _assert_same_outputs(model, reloaded, x)
    # the comparison has teeth: a freshly initialised model of the same kind disagrees
    fresh = timm.create_model(f"local-dir:{folder}", pretrained=False).eval()
    with torch.no_grad():
        assert not torch.allclose(fresh(x), model(x), rtol=1e-3, atol=1e-3)


def test_round_trip_hf_hub_offline_cache(exported, tmp_path, monkeypatch):
    model, x, folder = exported
    cache = use_local_hf_cache(monkeypatch, tmp_path / "hf_home")
    snapshot = build_local_hf_cache(cache, REPO, {name: folder / name for name in FILES})
    assert snapshot.parent.parent == repo_cache_folder(cache, REPO)
    assert (repo_cache_folder(cache, REPO) / "refs" / "main").read_text() == snapshot.name
    reloaded = timm.create_model(f"hf-hub:{REPO}", pretrained=True)
    assert reloaded.pretrained_cfg["hf_hub_id"] == REPO
    _assert_same_outputs(model, reloaded, x)
    # an explicit revision (the commit hash) resolves through the same cache
    _assert_same_outputs(model, create_pretrained_model(f"hf-hub:{REPO}@{snapshot.name}"), x)


def test_round_trip_transformers_timm_wrapper(exported):
    transformers = pytest.importorskip(
        "transformers", reason="transformers is not installed: add it to the test extra to check TimmWrapper loading")
    model, x, folder = exported
    wrapped = transformers.AutoModelForImageClassification.from_pretrained(str(folder)).eval()
    assert wrapped.config.num_labels == model.num_classes
    with torch.no_grad():
        torch.testing.assert_close(wrapped(x).logits, model(x), rtol=1e-6, atol=1e-6)


def test_reexport_of_reloaded_model_is_identical(exported, tmp_path):
    model, x, folder = exported
    again = export_to_folder(create_pretrained_model(f"local-dir:{folder}"), tmp_path / "again", repo_id=REPO,
                             metrics={"top1": 12.5, "eval_loss": 2.25})
    assert json.loads((again / "config.json").read_text()) == json.loads((folder / "config.json").read_text())
    a = safetensors.torch.load_file(str(folder / "model.safetensors"))
    b = safetensors.torch.load_file(str(again / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --- export details ----------------------------------------------------------------------------------------

def _test_resnet(**kwargs) -> nn.Module:
    return _randomise(timm.create_model("test_resnet", num_classes=5, **kwargs))


def test_shared_and_non_contiguous_tensors(tmp_path):
    model = _test_resnet()
    # tie two same-shaped BatchNorm weights, and give a conv a non-contiguous (channels-last) weight
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    first, second = next((a, b) for i, a in enumerate(bns) for b in bns[i + 1:]
                         if a.weight.shape == b.weight.shape)
    second.weight = first.weight
    conv = model.conv1[0] if isinstance(model.conv1, nn.Sequential) else model.conv1
    conv.weight = nn.Parameter(conv.weight.detach().permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2))
    assert not conv.weight.is_contiguous()

    folder = export_to_folder(model, tmp_path / "out")
    saved = safetensors.torch.load_file(str(folder / "model.safetensors"))
    assert set(saved) == set(model.state_dict())  # no tied key dropped: timm loads strictly
    _assert_same_outputs(model, timm.create_model(f"local-dir:{folder}", pretrained=True), _input(model))


def test_pretrained_cfg_overrides_and_labels(tmp_path):
    model = _test_resnet()
    labels = ["ant", "bee", "cat", "dog", "eel"]
    folder = export_to_folder(model, tmp_path / "out", label_names=labels, pretrained_cfg_overrides={
        "license": "cc-by-4.0", "mean": (0.1, 0.2, 0.3), "std": (0.9, 0.8, 0.7)})
    config = json.loads((folder / "config.json").read_text())
    assert config["label_names"] == labels and "label_names" not in config["pretrained_cfg"]
    assert "license: cc-by-4.0" in (folder / "README.md").read_text()
    reloaded = timm.create_model(f"local-dir:{folder}", pretrained=True)
    assert tuple(reloaded.pretrained_cfg["mean"]) == (0.1, 0.2, 0.3)
    assert list(reloaded.pretrained_cfg["label_names"]) == labels

    # labels set on the model's pretrained_cfg with its class count (as the training loop does) go to the
    # root too; labels of a source head with another class count are dropped (timm's rule)
    model.pretrained_cfg = dict(model.pretrained_cfg, label_names=tuple(labels), num_classes=5)
    config = json.loads((export_to_folder(model, tmp_path / "cfg") / "config.json").read_text())
    assert config["label_names"] == labels and "label_names" not in config["pretrained_cfg"]
    model.pretrained_cfg = dict(model.pretrained_cfg, num_classes=1000)
    config = json.loads((export_to_folder(model, tmp_path / "src") / "config.json").read_text())
    assert "label_names" not in config and "label_names" not in config["pretrained_cfg"]

    with pytest.raises(ValueError, match="url"):
        export_to_folder(model, tmp_path / "bad", pretrained_cfg_overrides={"url": "https://example.invalid/w.pth"})
    with pytest.raises(ValueError, match="label_names has 2 entries"):
        export_to_folder(model, tmp_path / "bad", pretrained_cfg_overrides={"label_names": ["a", "b"]})
    with pytest.raises(ValueError, match="num_classes"):
        export_to_folder(model, tmp_path / "bad", pretrained_cfg_overrides={"num_classes": 7})
    assert not (tmp_path / "bad").exists()


def test_label_names_become_transformers_id2label(tmp_path):
    transformers = pytest.importorskip(
        "transformers", reason="transformers is not installed: add it to the test extra to check TimmWrapper loading")
    labels = ["ant", "bee", "cat", "dog", "eel"]
    folder = export_to_folder(_test_resnet(), tmp_path / "out", label_names=labels)
    wrapped = transformers.AutoModelForImageClassification.from_pretrained(str(folder))
    assert wrapped.config.id2label == dict(enumerate(labels))


def test_custom_model_card_is_written_verbatim(tmp_path):
    card = "---\nlicense: mit\n---\n# My card\n"
    folder = export_to_folder(_test_resnet(), tmp_path / "out", model_card=card, metrics={"top1": 1.0})
    assert (folder / "README.md").read_text() == card


def test_export_is_atomic(tmp_path, monkeypatch):
    model = _test_resnet()
    target = tmp_path / "out"

    def broken_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(hub._export.safetensors.torch, "save_file", broken_save)
    with pytest.raises(OSError, match="disk full"):
        export_to_folder(model, target)
    assert list(tmp_path.iterdir()) == []  # neither the target nor a staging folder is left behind
    monkeypatch.undo()

    # into an existing folder: our files are replaced, others stay, no staging folder remains
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    (target / "config.json").write_text("{stale")
    export_to_folder(model, target)
    assert sorted(p.name for p in target.iterdir()) == sorted(FILES + ("notes.txt",))
    assert json.loads((target / "config.json").read_text())["architecture"] == "test_resnet"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    _assert_same_outputs(model, timm.create_model(f"local-dir:{target}", pretrained=True), _input(model))


def test_export_unwraps_compiled_and_dataparallel(tmp_path):
    model = _test_resnet()
    folder = export_to_folder(nn.DataParallel(model), tmp_path / "out")
    assert set(safetensors.torch.load_file(str(folder / "model.safetensors"))) == set(model.state_dict())


# --- push ---------------------------------------------------------------------------------------------------

def test_push_to_hub_with_fake_api_round_trips(tmp_path, monkeypatch):
    model = _test_resnet()
    api = FakeHfApi(owner="me")
    url = push_to_hub(model, "tiny-kan", metrics={"top1": 33.0}, private=True, revision="v1",
                      commit_message="first weights", api=api)
    names = [name for name, _ in api.calls]
    assert names == ["create_repo", "create_branch", "upload_folder"]
    assert api.calls[0][1]["exist_ok"] is True and api.calls[0][1]["private"] is True
    upload = api.uploads[-1]
    assert upload["repo_id"] == "me/tiny-kan"  # the id the Hub answered with, owner included
    assert upload["revision"] == "v1" and upload["commit_message"] == "first weights"
    assert url == f"{api.endpoint}/me/tiny-kan/commit/{upload['oid']}"
    assert sorted(upload["files"]) == sorted(FILES)
    assert 'timm.create_model("hf-hub:me/tiny-kan", pretrained=True)' in upload["files"]["README.md"].decode()
    assert not Path(upload["folder_path"]).exists()  # the temp export is cleaned up

    cache = use_local_hf_cache(monkeypatch, tmp_path / "hf_home")
    build_local_hf_cache(cache, "me/tiny-kan", upload["files"], revision="v1")
    _assert_same_outputs(model, timm.create_model("hf-hub:me/tiny-kan@v1", pretrained=True), _input(model))


def test_push_to_hub_default_api_gets_token(monkeypatch):
    made = {}

    def fake_hfapi(**kwargs):
        made.update(kwargs)
        return FakeHfApi()

    monkeypatch.setattr(hub._push, "HfApi", fake_hfapi)
    url = push_to_hub(_test_resnet(), "org/x", token="hf_dummy")
    assert made["token"] == "hf_dummy" and made["library_name"] == "kan_zoo"
    assert url.startswith("https://hub.invalid/org/x/commit/")


# --- errors -------------------------------------------------------------------------------------------------

def test_offline_and_not_cached_names_repo_and_file(tmp_path, local_hf_cache):
    cache = local_hf_cache
    with pytest.raises(HubFileNotCachedError, match=r"'config\.json' of Hugging Face repo 'org/absent'") as err:
        create_pretrained_model("hf-hub:org/absent")
    assert "HF_HUB_OFFLINE=1" in str(err.value) and err.value.repo_id == "org/absent"

    folder = export_to_folder(_test_resnet(), tmp_path / "out")
    build_local_hf_cache(cache, "org/config-only", {"config.json": folder / "config.json"})
    with pytest.raises(HubFileNotCachedError, match=r"'model\.safetensors' of Hugging Face repo 'org/config-only'"):
        create_pretrained_model("hf-hub:org/config-only")


def test_corrupt_safetensors_names_the_file(tmp_path, monkeypatch):
    folder = export_to_folder(_test_resnet(), tmp_path / "out")
    (folder / "model.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(CorruptCheckpointError, match=str(folder / "model.safetensors")):
        create_pretrained_model(f"local-dir:{folder}")

    cache = use_local_hf_cache(monkeypatch, tmp_path / "hf_home")
    snapshot = build_local_hf_cache(cache, "org/corrupt", {n: folder / n for n in FILES})
    with pytest.raises(CorruptCheckpointError, match=str(snapshot / "model.safetensors")):
        create_pretrained_model("hf-hub:org/corrupt")

    (folder / "config.json").write_text('{"architecture": ')
    with pytest.raises(CorruptCheckpointError, match=str(folder / "config.json")):
        create_pretrained_model(f"local-dir:{folder}")

    truncated = tmp_path / "truncated.safetensors"
    safetensors.torch.save_file({"w": torch.ones(64, 64)}, str(truncated))
    truncated.write_bytes(truncated.read_bytes()[:-100])
    with pytest.raises(CorruptCheckpointError, match=str(truncated)):
        load_checkpoint_strict(nn.Linear(64, 64), truncated)
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        load_checkpoint_strict(nn.Linear(64, 64), tmp_path / "nope.safetensors")


def test_load_checkpoint_strict(tmp_path):
    model = _test_resnet()
    path = tmp_path / "w.safetensors"
    safetensors.torch.save_file(hub.export_state_dict(model), str(path))
    other = timm.create_model("test_resnet", num_classes=5)
    assert load_checkpoint_strict(other, path) is other
    _assert_same_outputs(model, other, _input(model))

    with pytest.raises(CheckpointMismatchError, match=r"shape mismatches \(2\): fc.bias") as err:
        load_checkpoint_strict(timm.create_model("test_resnet", num_classes=7), path)
    assert {k for k, _, _ in err.value.shape_mismatches} == {"fc.weight", "fc.bias"}

    state = hub.export_state_dict(model)
    state["extra.weight"] = state.pop("fc.weight")
    safetensors.torch.save_file(state, str(path))
    with pytest.raises(CheckpointMismatchError) as err:
        load_checkpoint_strict(timm.create_model("test_resnet", num_classes=5), path)
    assert err.value.missing_keys == ["fc.weight"] and err.value.unexpected_keys == ["extra.weight"]
    assert "missing keys (1): fc.weight" in str(err.value) and "unexpected keys (1): extra.weight" in str(err.value)


def test_unknown_model_error():
    with pytest.raises(UnknownModelError, match=r"'test_resnett'.*test_resnet.*timm\.list_models\('kan_\*'\)"):
        hub.create_model_checked("test_resnett")


# --- command line ---------------------------------------------------------------------------------------------

def test_cli_export_from_name_and_checkpoint_then_from_folder(tmp_path, capsys):
    model = _test_resnet()
    ckpt = tmp_path / "trained.safetensors"
    safetensors.torch.save_file(hub.export_state_dict(model), str(ckpt))
    out = tmp_path / "exported"
    rc = cli_main(["export", "--model", "test_resnet", "--num-classes", "5", "--checkpoint", str(ckpt),
                   "--out", str(out), "--metrics", '{"top1": 41.5}', "--repo-id", "org/cli"])
    assert rc == 0 and capsys.readouterr().out.strip() == str(out)
    assert "| top1 | 41.5 |" in (out / "README.md").read_text()
    _assert_same_outputs(model, timm.create_model(f"local-dir:{out}", pretrained=True), _input(model))

    # an exported folder is itself a valid --model
    out2 = tmp_path / "again"
    assert cli_main(["export", "--model", str(out), "--out", str(out2)]) == 0
    _assert_same_outputs(model, timm.create_model(f"local-dir:{out2}", pretrained=True), _input(model))


def test_cli_push_uses_hfapi(tmp_path, monkeypatch, capsys):
    api = FakeHfApi()
    monkeypatch.setattr(hub._push, "HfApi", lambda **kwargs: api)
    rc = cli_main(["push", "--model", "test_resnet", "--num-classes", "5", "--repo-id", "org/cli-push",
                   "--private", "--commit-message", "cli upload"])
    assert rc == 0
    assert capsys.readouterr().out.strip().startswith("https://hub.invalid/org/cli-push/commit/")
    assert api.uploads[-1]["commit_message"] == "cli upload" and sorted(api.last_files) == sorted(FILES)


@pytest.mark.parametrize("argv, expected", [
    (["--model", "test_resnet", "--checkpoint", "{tmp}/missing.safetensors"], "missing.safetensors"),
    (["--model", "no_such_model_xyz"], "unknown model 'no_such_model_xyz'"),
    (["--model", "{tmp}/no_dir"], "no_dir"),
    (["--model", "test_resnet", "--num-classes", "7", "--checkpoint", "{ckpt}"], "shape mismatches (2): fc.bias"),
    (["--model", "test_resnet", "--num-classes", "5", "--metrics", "{{not json"], "--metrics: invalid JSON"),
    (["--model", "test_resnet", "--model-kwargs", '{{"bogus_arg": 1}}'], "cannot build test_resnet"),
])
def test_cli_errors(argv, expected, tmp_path, capsys):
    ckpt = tmp_path / "five.safetensors"
    safetensors.torch.save_file(hub.export_state_dict(_test_resnet()), str(ckpt))
    argv = [a.format(tmp=tmp_path, ckpt=ckpt) for a in argv]
    assert cli_main(["export", *argv, "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_cli_entry_point_subprocess(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-m", "kan_zoo.hub", "export", "--model", "kan_no_such_net",
                           "--out", str(tmp_path / "out")], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert "unknown model 'kan_no_such_net'" in proc.stderr and "timm.list_models('kan_*')" in proc.stderr


def test_export_drops_the_source_checkpoints_notes():
    """A pretrained tag's notes state ITS accuracy and size; fine-tuned weights must not inherit them."""
    model = timm.create_model("kan_test_vgg_gram", num_classes=3)
    model.pretrained_cfg = {**model.pretrained_cfg, "tag": "in1k", "notes": ("top1: 61.17", "params: 41424516")}
    config = hub.build_config(model)
    assert "notes" not in config["pretrained_cfg"] and "tag" not in config["pretrained_cfg"]
    assert config["architecture"] == "kan_test_vgg_gram" and config["num_classes"] == 3
