"""Other data sources (save_to_disk folder, parquet files) and --push-to-hub, each on a tiny run."""
from __future__ import annotations

import pytest

from kan_zoo.training import ConfigError
from kan_zoo.training.run import main


def _run(dataset, out, *extra):
    return main(["--dataset", str(dataset), "--model", "test_resnet", "--img-size", "16", "--epochs", "1",
                 "--batch-size", "4", "--workers", "0", "--no-progress", "--log-with", "none", "--no-model-ema",
                 "--output", str(out), "--cache-dir", str(out.parent / "hf_cache"), *extra])


@pytest.mark.parametrize("fmt", ["disk", "parquet"])
def test_saved_and_parquet_datasets(tiny_folder, tmp_path, fmt):
    import datasets

    ds = datasets.load_dataset("imagefolder", data_dir=str(tiny_folder), cache_dir=str(tmp_path / "hf_cache"))
    ds = ds.cast_column("image", datasets.Image())  # embed the bytes: the copy stands alone
    src = tmp_path / fmt
    if fmt == "disk":
        ds.save_to_disk(str(src))
    else:
        src.mkdir()
        for split, part in ds.items():
            part.to_parquet(str(src / f"{split}-00000-of-00001.parquet"))
    result = _run(src, tmp_path / "run")
    assert result["export_metrics"]["val_images"] == 15
    assert result["metrics"]["train/unreadable_images"] == 1  # the corrupt file travelled along


def test_push_to_hub_goes_through_kan_zoo_hub(tiny_folder, tmp_path, monkeypatch):
    import huggingface_hub

    import kan_zoo.hub

    calls = []

    def fake_push(model, repo_id, *, metrics=None, pretrained_cfg_overrides=None, **kwargs):
        calls.append((repo_id, metrics, pretrained_cfg_overrides, model.num_classes))
        return f"https://huggingface.co/{repo_id}/commit/0"

    monkeypatch.setattr(huggingface_hub, "get_token", lambda: "hf_test")
    monkeypatch.setattr(kan_zoo.hub, "push_to_hub", fake_push)
    result = _run(tiny_folder, tmp_path / "run", "--push-to-hub", "me/tiny-kan")
    assert result["hub_url"].endswith("me/tiny-kan/commit/0")
    (repo, metrics, overrides, classes), = calls
    assert repo == "me/tiny-kan" and classes == 3
    assert overrides["input_size"] == (3, 16, 16) and overrides["label_names"] == ["class_0", "class_1", "class_2"]
    assert any(k.startswith("top-1") for k in metrics)


def test_push_to_hub_without_token_fails_before_training(tiny_folder, tmp_path, monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    with pytest.raises(ConfigError, match="--push-to-hub needs a Hugging Face token"):
        _run(tiny_folder, tmp_path / "run", "--push-to-hub", "me/tiny-kan")
    assert not (tmp_path / "run").exists()


def test_export_fallback_without_kan_zoo_hub(tmp_path, monkeypatch):
    """Without kan_zoo.hub the export writes the same loadable layout through timm."""
    import sys

    import timm
    import torch

    from kan_zoo.training.export import export_model

    monkeypatch.setitem(sys.modules, "kan_zoo.hub", None)  # import fails
    model = timm.create_model("test_resnet", num_classes=3, in_chans=1).eval()
    cfg = dict(input_size=(1, 16, 16), mean=(0.5,), std=(0.25,), crop_pct=1.0, interpolation="bilinear")
    folder = export_model(model, tmp_path / "export", metrics={"top-1": 50.0}, data_config=cfg,
                          label_names=["a", "b", "c"])
    assert {"model.safetensors", "config.json", "README.md"} <= {p.name for p in folder.iterdir()}
    monkeypatch.delitem(sys.modules, "kan_zoo.hub")
    reloaded = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    assert reloaded.pretrained_cfg["input_size"] == (1, 16, 16) and tuple(reloaded.pretrained_cfg["std"]) == (0.25,)
    x = torch.randn(2, 1, 16, 16)
    torch.testing.assert_close(reloaded(x), model(x))
    assert "top-1" in (folder / "README.md").read_text()
