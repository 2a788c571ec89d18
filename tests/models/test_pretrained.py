"""The torch-conv-kan ImageNet checkpoints through timm's real ``pretrained=True`` path, offline.

A local Hugging Face cache holds, for each published repo, a ``model.safetensors`` in the reference
layout filled by the fixtures' fill.py and the repo's ``config.json``. The fixtures' logits for
those weights prove the conversion exact.
"""
from __future__ import annotations

import pytest
import timm
import torch

import kan_zoo  # noqa: F401  registers kan_* models
from hub_helpers import build_local_hf_cache, serve_reference_checkpoints, use_local_hf_cache
from kan_zoo.hub import CheckpointMismatchError, CorruptCheckpointError, HubFileNotCachedError
from kan_zoo.models.kan_vgg import PRETRAINED_WEIGHTS
from reference_fixtures import PRETRAINED_CASES as CASES, checkpoint_repo_files, load_model_case, relative_error

BN = "kan_vgg11_bottleneck_gram.in1k"  # the cheapest of the three (7 M parameters, BatchNorm: 32 px works)


def _repo(tag: str) -> str:
    return PRETRAINED_WEIGHTS[tag]["hf_hub_id"]


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """Offline HF cache with the three repos; yields the fixtures' forward tensors per tag."""
    with pytest.MonkeyPatch.context() as mp:
        yield serve_reference_checkpoints(mp, tmp_path_factory.mktemp("hf_home"), CASES)


@pytest.fixture
def no_unpickling(monkeypatch):
    """Weights must be read with safetensors: any torch.load fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("pretrained weights were unpickled with torch.load")

    monkeypatch.setattr(torch, "load", refuse)


@pytest.mark.parametrize("tag", list(CASES))
def test_fixture_outputs_through_timm_pretrained_path(hub, tag, no_unpickling):
    forward = hub[tag]
    model = timm.create_model(tag, pretrained=True).eval()
    assert model.pretrained_cfg["hf_hub_id"] == _repo(tag)
    x = forward["input"]
    with torch.no_grad():
        feature_maps = model.forward_features(x)
        features = model.forward_head(feature_maps, pre_logits=True)
        assert relative_error(model.forward_head(feature_maps), forward["logits"]) < 1e-5
        # float32 rounding of two implementations: the fused conv sums in another order and the 2x2
        # InstanceNorms of the last stage amplify it (1.05e-5 measured on v2, ~5e-6 on v4).
        assert relative_error(features, forward["features"]) < 2e-5

        model.double()
        feature_maps = model.forward_features(x.double())
        assert relative_error(model.forward_head(feature_maps), forward["logits_float64"]) < 1e-9
        # Exact arithmetic against the reference's own float32 features: within its rounding.
        assert relative_error(model.forward_head(feature_maps, pre_logits=True), forward["features"]) < 1e-5


def test_fine_tuning_head_is_dropped(hub):
    x = torch.randn(2, 3, 32, 32)
    full = timm.create_model(BN, pretrained=True).eval()
    tuned = timm.create_model(BN, pretrained=True, num_classes=10).eval()
    assert tuned.get_classifier().out_features == 10
    with torch.no_grad():
        torch.testing.assert_close(tuned.forward_head(tuned.forward_features(x), pre_logits=True),
                                   full.forward_head(full.forward_features(x), pre_logits=True))
        assert tuned(x).shape == (2, 10)
    # The backbone is the checkpoint's, key for key.
    for key, value in full.state_dict().items():
        if not key.startswith("head."):
            torch.testing.assert_close(tuned.state_dict()[key], value, rtol=0, atol=0)


@pytest.mark.parametrize("tag, size", [("kan_vgg11_slim_gram.in1k", 64), (BN, 32)])
def test_in_chans_1_equals_rgb_model_on_replicated_grey(hub, tag, size):
    grey = torch.rand(1, 1, size, size)
    rgb_model = timm.create_model(tag, pretrained=True).eval()
    grey_model = timm.create_model(tag, pretrained=True, in_chans=1).eval()
    with torch.no_grad():
        expected = rgb_model(grey.expand(-1, 3, -1, -1))
        # Summing weights instead of inputs only reorders float32 additions.
        assert relative_error(grey_model(grey), expected) < 1e-4


def _repeat_rule(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    # timm's adapt_input_conv rule for in_chans > 3, spelled out independently: channels 0,1,2,0,...
    index = torch.arange(in_chans) % weight.shape[1]
    return weight[:, index] * (weight.shape[1] / in_chans)


def test_in_chans_4_adapts_every_basis_function(hub):
    rgb = timm.create_model("kan_vgg11_slim_gram.in1k", pretrained=True)
    four = timm.create_model("kan_vgg11_slim_gram.in1k", pretrained=True, in_chans=4)
    # Per function (base branch and all six Gram polynomials): (out, F, c, k, k) blocks.
    torch.testing.assert_close(four.features[0].coefficients(), _repeat_rule_blocks(rgb.features[0].coefficients(), 4))
    torch.testing.assert_close(four.features[2].weight, rgb.features[2].weight)

    bn_rgb = timm.create_model(BN, pretrained=True)
    bn_four = timm.create_model(BN, pretrained=True, in_chans=4)
    stem, stem_rgb = bn_four.features[0], bn_rgb.features[0]
    torch.testing.assert_close(stem.proj_in_weight, _repeat_rule(stem_rgb.proj_in_weight, 4))
    torch.testing.assert_close(stem.base_weight, _repeat_rule(stem_rgb.base_weight, 4))
    torch.testing.assert_close(stem.weight, stem_rgb.weight)  # the inner width does not depend on in_chans
    with torch.no_grad():
        assert bn_four.eval()(torch.randn(1, 4, 32, 32)).shape == (1, 1000)


def _repeat_rule_blocks(blocks: torch.Tensor, in_chans: int) -> torch.Tensor:
    return torch.stack([_repeat_rule(blocks[:, f], in_chans) for f in range(blocks.shape[1])], 1)


def test_features_only_pretrained(hub):
    x = torch.randn(1, 3, 32, 32)
    model = timm.create_model(BN, pretrained=True).eval()
    backbone = timm.create_model(BN, pretrained=True, features_only=True).eval()
    with torch.no_grad():
        maps = backbone(x)
        assert [m.shape[1] for m in maps] == [32, 64, 128, 256, 256, 512]
        torch.testing.assert_close(maps[-1], model.forward_features(x))


def test_pretrained_cfgs_describe_the_checkpoints():
    for tag, info in PRETRAINED_WEIGHTS.items():
        cfg = timm.models.get_pretrained_cfg(tag).to_dict()
        assert cfg["hf_hub_id"] == info["hf_hub_id"] and cfg["hf_hub_filename"] == "model.safetensors"
        assert cfg["input_size"] == (3, 224, 224) and cfg["crop_pct"] == 0.875
        assert cfg["interpolation"] == "bilinear" and cfg["license"] == "mit"
        assert cfg["mean"] == timm.data.IMAGENET_DEFAULT_MEAN and cfg["std"] == timm.data.IMAGENET_DEFAULT_STD
        assert cfg["first_conv"] == "features.0" and cfg["classifier"] == "head.fc"
        notes = " ".join(cfg["notes"])
        assert f"{info['top1']:.2f}" in notes and f"{info['top5']:.2f}" in notes and f"{info['params']:,}" in notes
        assert info["hf_hub_id"] in notes
    # The bare architecture name resolves to its only tag, as timm does for its own models.
    assert timm.models.get_pretrained_cfg("kan_vgg11_gram").hf_hub_id == "brivangl/vgg_kagn11_v4"
    with pytest.raises(RuntimeError, match="No pretrained weights"):
        timm.create_model("kan_vgg13_gram", pretrained=True, device="meta")


def test_offline_and_not_cached_names_repo_and_file(tmp_path, monkeypatch):
    use_local_hf_cache(monkeypatch, tmp_path / "empty")
    with pytest.raises(HubFileNotCachedError, match=r"model\.safetensors.*brivangl/vgg_kagn11_v4"):
        timm.create_model("kan_vgg11_gram.in1k", pretrained=True, device="meta")


def test_corrupt_file_names_repo_and_file(tmp_path, monkeypatch):
    cache = use_local_hf_cache(monkeypatch, tmp_path / "corrupt")
    build_local_hf_cache(cache, _repo(BN), {"model.safetensors": b"\x10\x00\x00\x00\x00\x00\x00\x00{not json"})
    with pytest.raises(CorruptCheckpointError, match=r"model\.safetensors.*brivangl/vgg_kagn_bn11_v4"):
        timm.create_model(BN, pretrained=True)


def test_mismatched_keys_are_listed(tmp_path, monkeypatch):
    cache = use_local_hf_cache(monkeypatch, tmp_path / "mismatch")
    _, _, state = load_model_case(CASES[BN])
    del state["features.4.inner_proj.0.weight"]
    state["features.4.extra_gate"] = torch.zeros(3)
    state["features.1.weight"] = torch.zeros(3)  # a max pool has no weights
    build_local_hf_cache(cache, _repo(BN), checkpoint_repo_files(CASES[BN], state))
    with pytest.raises(CheckpointMismatchError) as info:
        timm.create_model(BN, pretrained=True)
    message = str(info.value)
    assert "brivangl/vgg_kagn_bn11_v4" in message and "model.safetensors" in message
    assert info.value.missing_keys == ["features.4.inner_proj.0.weight"]
    assert sorted(info.value.unexpected_keys) == ["features.1.weight", "features.4.extra_gate"]
    for key in info.value.missing_keys + info.value.unexpected_keys:
        assert key in message


def test_model_card_states_source_licence_accuracy_and_size():
    from kan_zoo.hub import pretrained_model_card

    for tag, info in PRETRAINED_WEIGHTS.items():
        card = pretrained_model_card(tag)
        for fact in (info["hf_hub_id"], f"{info['top1']:.2f}", f"{info['top5']:.2f}", f"{info['params']:,}",
                     "MIT", "resize 256, centre crop 224", "bilinear"):
            assert fact in card, (tag, fact)


def test_kan_zoo_layout_round_trips_through_local_dir(tmp_path):
    """Weights exported by kan_zoo (already in our layout) load through the same filter, in_chans included."""
    from kan_zoo.hub import export_to_folder

    model = timm.create_model("kan_test_vgg_gram", num_classes=5).eval()
    export_to_folder(model, tmp_path / "export")
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        loaded = timm.create_model(f"local-dir:{tmp_path / 'export'}", pretrained=True).eval()
        torch.testing.assert_close(loaded(x.expand(-1, 3, -1, -1)), model(x.expand(-1, 3, -1, -1)), rtol=0, atol=0)
        grey = timm.create_model(f"local-dir:{tmp_path / 'export'}", pretrained=True, in_chans=1).eval()
        torch.testing.assert_close(grey(x), model(x.expand(-1, 3, -1, -1)))
