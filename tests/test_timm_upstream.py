"""timm's own model test file (tests/test_models.py of the installed timm release) run on kan_* models.

scripts/fetch_timm_tests.sh fetches it at set-up time from timm's source distribution. Its tests
are parametrised over timm's registry at import time; here the same test functions are called
with the kan_test_* variants of every family and basis (the full-size models share their code
and are built on the meta device by the family tests).
"""
import importlib.util
import os
from pathlib import Path

import pytest
import timm
import torch

import kan_zoo  # noqa: F401  (registers the kan_* models)

UPSTREAM = Path(
    os.environ.get(
        "KAN_ZOO_TIMM_TESTS",
        Path(__file__).resolve().parents[1] / ".upstream" / f"timm-{timm.__version__}" / "tests" / "test_models.py",
    )
)
FAMILIES = ("vgg", "resnet", "densenet", "rdnet")


def _load_upstream():
    if not UPSTREAM.is_file():
        raise FileNotFoundError(
            f"timm's upstream test file is missing at {UPSTREAM}; run scripts/fetch_timm_tests.sh (set-up does)"
        )
    spec = importlib.util.spec_from_file_location("timm_upstream_test_models", UPSTREAM)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


upstream = _load_upstream()

# Every basis, through the tests that run a model; the gram variant of each family also through the
# slower structural ones (their code paths do not depend on the basis).
TINY = sorted(timm.list_models("kan_test_*"))
PER_BASIS_TESTS = ("test_model_backward", "test_model_default_cfgs")
PER_FAMILY_TESTS = (
    "test_model_forward",
    "test_model_forward_features",
    "test_model_forward_intermediates_features",
    "test_model_forward_intermediates",
    "test_model_forward_fx",
    "test_model_backward_fx",
    "test_prune_intermediate_layers_contract",
)


def _call(test_name: str, model_name: str):
    test = getattr(upstream, test_name)
    kwargs = {}
    params = test.__code__.co_varnames[: test.__code__.co_argcount]
    if "batch_size" in params:
        kwargs["batch_size"] = 2 if "backward" in test_name else 1
    if "cfg_device" in params:
        kwargs["cfg_device"] = "meta"
    test(model_name, **kwargs)


def test_every_family_has_tiny_variants_for_every_basis():
    expected = {f"kan_test_{family}_{basis}" for family in FAMILIES for basis in kan_zoo.BASES}
    assert expected <= set(TINY), sorted(expected - set(TINY))


@pytest.mark.parametrize("test_name", PER_BASIS_TESTS)
@pytest.mark.parametrize("model_name", TINY)
def test_upstream_per_basis(test_name, model_name):
    _call(test_name, model_name)


@pytest.mark.parametrize("test_name", PER_FAMILY_TESTS)
@pytest.mark.parametrize("model_name", [f"kan_test_{family}_gram" for family in FAMILIES])
def test_upstream_per_family(test_name, model_name):
    _call(test_name, model_name)


@pytest.mark.parametrize("family", FAMILIES)
def test_upstream_default_cfgs_on_a_full_size_model(family):
    # The structural cfg checks run on the meta device, so a real depth costs nothing.
    name = {
        "vgg": "kan_vgg11_gram", "resnet": "kan_resnet18_gram", "densenet": "kan_densenet121_gram",
        "rdnet": "kan_rdnet_tiny_gram",
    }[family]
    _call("test_model_default_cfgs", name)
