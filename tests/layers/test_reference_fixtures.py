"""kan_zoo layers against outputs of the original torch-conv-kan layers (../shared/fixtures)."""
import pytest
import torch

from kan_zoo.convert import convert_layer_state_dict
from reference_fixtures import LAYER_CASES, build_layer_for_case, load_layer_case, relative_error

# The fixture README's tolerances: 1e-5 relative in float32, 1e-9 in float64, except the B-spline
# layers, whose reference keeps its knots in float32 (1e-6).
F32_TOL = 1e-5


def _f64_tol(case: str) -> float:
    return 1e-6 if case.startswith("kan2d") else 1e-9


def _converted_layer(case: str, dtype=torch.float32):
    meta, tensors, state = load_layer_case(case)
    layer = build_layer_for_case(meta)
    converted = convert_layer_state_dict(state, target=layer)
    layer.load_state_dict(converted, strict=True)
    return layer.to(dtype), tensors


def test_fixtures_are_present():
    assert len(LAYER_CASES) == 27, "../shared/fixtures/torch_conv_kan/layers is missing or incomplete"


@pytest.mark.parametrize("case", LAYER_CASES)
def test_eval_output_matches_reference(case):
    layer, tensors = _converted_layer(case)
    with torch.no_grad():
        out = layer.eval()(tensors["input"])
    assert out.shape == tensors["output_eval"].shape
    assert relative_error(out, tensors["output_eval"]) < F32_TOL


@pytest.mark.parametrize("case", LAYER_CASES)
def test_float64_output_matches_reference(case):
    layer, tensors = _converted_layer(case, torch.float64)
    with torch.no_grad():
        out = layer.eval()(tensors["input"].double())
    assert out.dtype == torch.float64
    assert relative_error(out, tensors["output_eval_float64"]) < _f64_tol(case)


@pytest.mark.parametrize("case", LAYER_CASES)
def test_train_output_and_running_stats_match_reference(case):
    layer, tensors = _converted_layer(case)
    with torch.no_grad():
        out = layer.train()(tensors["input"])
    assert relative_error(out, tensors["output_train"]) < F32_TOL
    stats = {k: v for k, v in tensors.items() if k.startswith("running_")}
    if "BatchNorm" in str(type(layer.norm)):
        assert stats, "a BatchNorm fixture must carry its running statistics"
    for key, expected in stats.items():
        stat, module = key.split("_after_train.")
        assert module.startswith("layer_norm.")
        group = int(module.split(".")[1])
        ours = getattr(layer.norm, stat).view(-1, expected.numel())[group]
        assert torch.allclose(ours, expected, rtol=1e-5, atol=1e-6), key


def test_reference_layout_is_checked_against_the_target():
    meta, _, state = load_layer_case("kagn2d_d3_g1")
    meta["kwargs"]["output_dim"] = 16
    with pytest.raises(ValueError, match="shape mismatches.*weight"):
        convert_layer_state_dict(state, target=build_layer_for_case(meta))
    del state["beta_weights"]
    with pytest.raises(ValueError, match="torch-conv-kan|missing keys"):
        convert_layer_state_dict(state, target=build_layer_for_case(load_layer_case("kagn2d_d3_g1")[0]))
