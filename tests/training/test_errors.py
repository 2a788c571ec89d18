"""Bad input fails with a clear message naming the problem, before any training starts."""
from __future__ import annotations

import pytest
import torch

from kan_zoo.training import CheckpointError, ConfigError, DataError, ModelError
from kan_zoo.training.run import main


def _run(folder, out, *extra):
    base = ["--dataset", str(folder), "--model", "test_resnet", "--img-size", "16", "--epochs", "1",
            "--batch-size", "4", "--grad-accum", "1", "--workers", "0", "--no-progress", "--log-with", "none",
            "--output", str(out), "--cache-dir", str(out.parent / "hf_cache")]
    return main([*base, *extra])


@pytest.mark.parametrize("extra, error, pattern", [
    (["--dataset", "/no/such/folder"], DataError, r"dataset path '/no/such/folder' does not exist"),
    (["--dataset", "kan-zoo-tests/no-such-dataset"], DataError,
     r"no local path 'kan-zoo-tests/no-such-dataset' exists .*, and no Hub dataset of that name could be reached: "
     r"the Hub cannot be reached while offline"),
    (["--label-column", "labels"], DataError,
     r"column 'labels' \(--label-column\) not found .*available columns: \['image', 'label'\]"),
    (["--image-column", "img"], DataError, r"column 'img' \(--image-column\) not found .*available columns"),
    (["--val-split", "val"], DataError,
     r"split 'val' \(--val-split\) not found .*available splits: \['train', 'validation'\]"),
    (["--model", "kan_no_such_net"], ModelError, r"unknown model 'kan_no_such_net'"),
    (["--model", "test_resnett"], ModelError, r"unknown model 'test_resnett'.*did you mean.*test_resnet"),
    (["--num-classes", "7"], DataError, r"--num-classes 7 but the label column 'label' has 3 classes"),
    (["--pretrained-file", "/no/such/weights.safetensors"], ModelError, r"--pretrained-file .* does not exist"),
    # checked against the published config, before any download
    (["--pretrained"], ModelError,
     r"pretrained head of 'test_resnet' has 1000 classes but the data has 3; pass --reset-head"),
    (["--log-with", "csv,nonsense"], ConfigError, r"--log-with: unknown tracker 'nonsense'"),
    (["--model", "kan_test_vgg_gram", "--pretrained"], ModelError,
     r"'kan_test_vgg_gram' has no published pretrained weights"),
])
def test_bad_input_is_refused_before_training(tiny_folder, tmp_path, extra, error, pattern):
    out = tmp_path / "run"
    with pytest.raises(error, match=pattern):
        _run(tiny_folder, out, *extra)
    assert not (out / "checkpoints").exists()


def test_pretrained_head_with_other_class_count(tiny_folder, tmp_path):
    import timm
    from safetensors.torch import save_file

    weights = tmp_path / "five_classes.safetensors"
    save_file(timm.create_model("test_resnet", num_classes=5).state_dict(), str(weights))
    with pytest.raises(ModelError, match=r"pretrained head of 'test_resnet' has 5 classes but the data has 3; "
                                         r"pass --reset-head"):
        _run(tiny_folder, tmp_path / "a", "--pretrained-file", str(weights))
    assert not (tmp_path / "a" / "checkpoints").exists()


def test_pretrained_file_with_reset_head_trains(tiny_folder, tmp_path):
    import timm
    from safetensors.torch import save_file

    src = timm.create_model("test_resnet", num_classes=5)
    weights = tmp_path / "five_classes.safetensors"
    save_file(src.state_dict(), str(weights))
    result = _run(tiny_folder, tmp_path / "b", "--pretrained-file", str(weights), "--reset-head", "--lr", "0",
                  "--warmup-lr", "0", "--no-model-ema", "--drop-rate", "0")
    from safetensors.torch import load_file

    exported = load_file(str(tmp_path / "b" / "export" / "model.safetensors"))
    # lr 0: the body is exactly the pretrained one, the head is new with 3 outputs
    torch.testing.assert_close(exported["conv1.0.weight"], src.state_dict()["conv1.0.weight"])
    assert exported["fc.weight"].shape[0] == 3
    assert result["export_metrics"]["val_images"] == 15
    assert result["export_metrics"]["weights"] == "model"


def test_existing_run_needs_resume(tiny_folder, tmp_path):
    out = tmp_path / "run"
    _run(tiny_folder, out, "--no-model-ema")
    from accelerate.state import AcceleratorState, GradientState, PartialState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    PartialState._reset_state()
    with pytest.raises(CheckpointError, match="already holds checkpoints; pass --resume"):
        _run(tiny_folder, out)
