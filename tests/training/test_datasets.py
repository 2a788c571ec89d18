"""Datasets a user brings: string labels (image folder with metadata, parquet), bad columns and paths,
unreadable images named once per file in both splits, and exports that describe the run."""
from __future__ import annotations

import json
import re
from argparse import Namespace
from pathlib import Path

import numpy as np
import pytest

from kan_zoo.training import CheckpointError, ConfigError, DataError
from kan_zoo.training.run import main

TEXTURES = ("sand", "brick", "grass")  # written unsorted: the ids must follow the sorted names


def _texture_folder(root: Path, per_class: dict, seed: int = 0) -> Path:
    """Flat split folders with metadata.jsonl: a string column 'texture', one corrupt file per split."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, n in per_class.items():
        d = root / split
        d.mkdir(parents=True)
        rows = []
        for i in range(n):
            for c, texture in enumerate(TEXTURES):
                a = rng.integers(0, 80, (8, 8, 3))
                a[..., c] += 150  # learnable: one bright channel per class
                Image.fromarray(a.astype("uint8")).save(d / f"{texture}_{i}.png")
                rows.append({"file_name": f"{texture}_{i}.png", "texture": texture})
        (d / f"broken_{split}.png").write_bytes(b"not an image")
        rows.append({"file_name": f"broken_{split}.png", "texture": "grass"})
        (d / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


@pytest.fixture(scope="module")
def texture_folder(tmp_path_factory) -> Path:
    return _texture_folder(tmp_path_factory.mktemp("textures"), {"train": 6, "validation": 2})


@pytest.fixture(scope="module")
def texture_parquet(texture_folder, tmp_path_factory) -> Path:
    import datasets

    root = tmp_path_factory.mktemp("textures_pq") / "textures_parquet"
    root.mkdir()
    ds = datasets.load_dataset("imagefolder", data_dir=str(texture_folder), cache_dir=str(root.parent / "hf_cache"))
    ds = ds.cast_column("image", datasets.Image(decode=False))  # the corrupt bytes travel as they are
    for split, part in ds.items():
        part.to_parquet(str(root / f"{split}-00000-of-00001.parquet"))
    return root


def _args(dataset, out, *extra):
    return ["--dataset", str(dataset), "--model", "test_resnet", "--img-size", "8", "--epochs", "2",
            "--batch-size", "6", "--grad-accum", "1", "--workers", "0", "--warmup-steps", "1", "--lr", "3e-3",
            "--no-progress", "--log-with", "none", "--checkpoint-steps", "0", "--no-model-ema",
            "--output", str(out), "--cache-dir", str(out.parent / "hf_cache"), *extra]


@pytest.mark.parametrize("source", ["folder", "parquet"])
def test_string_labels_map_to_sorted_ids_and_bad_files_are_named_once(source, texture_folder, texture_parquet,
                                                                      tmp_path, capsys):
    dataset = texture_folder if source == "folder" else texture_parquet
    out = tmp_path / "run"
    result = main(_args(dataset, out, "--label-column", "texture", "--license", "cc-by-4.0"))
    log = capsys.readouterr().out
    assert log.count("3 classes found in label column 'texture' (names, ids in sorted order: brick, grass, sand)") == 1
    # two epochs, each file met in each: named once, counted once (files, not encounters), both splits
    for split, what in (("train", "training"), ("validation", "validation")):
        named = [line for line in log.splitlines() if line.startswith(f"warning: unreadable {what} image skipped:")]
        assert len(named) == 1 and f"broken_{split}.png" in named[0], log
    assert result["metrics"]["train/unreadable_images"] == 1
    assert result["metrics"]["val/unreadable"] == 1 and result["metrics"]["val/count"] == 6
    report = (out / "unreadable_images.txt").read_text().splitlines()
    assert len(report) == 2 and report[0].startswith("train\t") and report[1].startswith("validation\t")
    config = json.loads((out / "export" / "config.json").read_text())
    assert config["label_names"] == ["brick", "grass", "sand"]
    assert config["pretrained_cfg"]["license"] == "cc-by-4.0"


def test_label_mapping_is_sorted_and_checks_the_validation_split(texture_folder, tmp_path):
    import datasets

    from kan_zoo.training.data import _labels

    ds = datasets.load_dataset("imagefolder", data_dir=str(texture_folder), cache_dir=str(tmp_path / "c"))
    args = Namespace(label_column="texture", num_classes=None, streaming=False, train_split="train",
                     val_split="validation")
    n, names, ids, note = _labels(args, ds["train"], ds["validation"])
    assert (n, names, ids) == (3, ["brick", "grass", "sand"], {"brick": 0, "grass": 1, "sand": 2})
    # the same mapping from the rows in another order (as another process or a resume might read them)
    n2, names2, ids2, _ = _labels(args, ds["train"].shuffle(seed=3), ds["validation"])
    assert (names2, ids2) == (names, ids)
    # streamed: the label column is read once instead of unique()
    streamed = Namespace(**{**vars(args), "streaming": True})
    assert _labels(streamed, ds["train"].to_iterable_dataset(), ds["validation"].to_iterable_dataset())[:3] == \
        (n, names, ids)
    unseen = ds["validation"].map(lambda r: {"texture": "marble"})
    with pytest.raises(DataError, match=r"split 'validation' has labels that split 'train' never uses: \['marble'\]"):
        _labels(args, ds["train"], unseen)


@pytest.mark.parametrize("extra, pattern", [
    (["--label-column", "image"],
     r"--label-column 'image' holds images, not class labels; the columns of .* are 'image' \(images\), "
     r"'label' \(class labels \(3 names\)\)"),
    (["--image-column", "label"], r"--image-column 'label' holds class labels \(3 names\), not images"),
])
def test_columns_that_hold_the_wrong_thing(tiny_folder, tmp_path, extra, pattern):
    with pytest.raises(DataError, match=pattern):
        main(_args(tiny_folder, tmp_path / "run", *extra))


def test_misspelt_relative_path_is_called_a_missing_path_first(texture_parquet, tmp_path, monkeypatch):
    monkeypatch.chdir(texture_parquet.parent)
    with pytest.raises(DataError) as info:
        main(_args("textures_parqet", tmp_path / "run"))
    message = str(info.value)
    assert message.startswith("no local path 'textures_parqet' exists")
    assert "did you mean ['textures_parquet']" in message
    assert message.index("no local path") < message.index("no Hub dataset of that name could be reached")
    assert "offline" in message


def test_unwritable_output_is_refused_before_loading(tmp_path):
    # the dataset does not exist either: the output is checked first, before any loading
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    with pytest.raises(ConfigError, match=r"--output '.*file.txt/run' cannot be created: '.*file.txt' is a file"):
        main(_args(tmp_path / "no_data", a_file / "run"))
    with pytest.raises(ConfigError, match="exists and is not a folder"):
        main(_args(tmp_path / "no_data", a_file))
    locked = Path("/sys/kan_zoo_training_test")  # not writable, even for root
    if locked.parent.is_dir() and not locked.exists():
        with pytest.raises(ConfigError, match=r"--output '/sys/kan_zoo_training_test' is not writable \(its nearest "
                                              r"existing parent '/sys' is not writable\)"):
            main(_args(tmp_path / "no_data", locked))


def test_resume_refuses_another_class_list(tmp_path):
    from kan_zoo.training.setup import _check_resume

    ckpt = tmp_path / "checkpoints" / "step_000000001"
    ckpt.mkdir(parents=True)
    (ckpt / "trainer_state.json").write_text(json.dumps({"model": "test_resnet", "label_names": ["a", "b"]}))
    args = Namespace(model="test_resnet")
    _check_resume(ckpt, args, Namespace(label_names=["a", "b"]))  # same classes: fine
    with pytest.raises(CheckpointError, match="was trained on the classes .* not the same dataset"):
        _check_resume(ckpt, args, Namespace(label_names=["a", "c"]))
    with pytest.raises(CheckpointError, match="was trained with --model 'test_resnet', not 'resnet18'"):
        _check_resume(ckpt, Namespace(model="resnet18"), Namespace(label_names=["a", "b"]))


def test_export_of_a_timm_model_describes_the_run_not_the_pretrained_tag(tmp_path):
    import timm
    import torch

    from kan_zoo.training.export import describing_run, export_model, run_pretrained_cfg

    model = timm.create_model("resnet18", num_classes=3).eval()  # its cfg: resnet18.a1_in1k's
    source = dict(model.pretrained_cfg)
    assert source["test_input_size"] == (3, 288, 288) and source["license"] == "apache-2.0"
    data_cfg = dict(input_size=(3, 32, 32), interpolation="bilinear", mean=(0.5,) * 3, std=(0.25,) * 3,
                    crop_pct=1.0, crop_mode="center")
    with describing_run(model, run_pretrained_cfg(model, data_cfg, "cc-by-4.0")):
        export_model(model, tmp_path / "export", metrics={"top-1": 50.0}, data_config=data_cfg,
                     label_names=["a", "b", "c"])
    assert model.pretrained_cfg == source  # the model's own cfg is back
    cfg = json.loads((tmp_path / "export" / "config.json").read_text())["pretrained_cfg"]
    assert cfg["input_size"] == [3, 32, 32] and cfg["crop_pct"] == 1.0 and cfg["interpolation"] == "bilinear"
    assert cfg["mean"] == [0.5] * 3 and cfg["std"] == [0.25] * 3 and cfg["license"] == "cc-by-4.0"
    for stale in ("test_input_size", "test_crop_pct", "paper_ids", "origin_url", "tag", "hf_hub_id", "url",
                  "pool_size"):
        assert stale not in cfg, stale
    card = (tmp_path / "export" / "README.md").read_text()
    assert "license: cc-by-4.0" in card and "apache-2.0" not in card and "2110.00476" not in card
    reloaded = timm.create_model(f"local-dir:{tmp_path / 'export'}", pretrained=True).eval()
    assert reloaded.pretrained_cfg["input_size"] == (3, 32, 32)
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(reloaded(x), model(x))
    assert re.search(r"Input size:\*\* 3 x 32 x 32", card)
