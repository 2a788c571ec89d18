"""timm's own model test file (tests/test_models.py of the installed timm release) run on kan_* models.

scripts/fetch_timm_tests.sh fetches it at set-up time from timm's source distribution. Its tests
are parametrised over timm's registry at import time; here the same test functions are called on
the kan_* models, unchanged, with the input sizes timm's own constants cap them at:

* the kan_test_* variants of every family and basis (structural tests once per family);
* a fixed sample of the real models (SAMPLE_CLASSIFIERS, SAMPLE_SEGMENTATION) through every test of
  the file that timm runs over its whole registry, except those NOT_RUN says why not.
"""
import importlib.util
import os
from pathlib import Path

import pytest
import timm
import torch

import kan_zoo  # noqa: F401  (registers the kan_* models)
from hub_helpers import serve_reference_checkpoints

UPSTREAM = Path(
    os.environ.get(
        "KAN_ZOO_TIMM_TESTS",
        Path(__file__).resolve().parents[1] / ".upstream" / f"timm-{timm.__version__}" / "tests" / "test_models.py",
    )
)
FAMILIES = ("vgg", "resnet", "densenet", "rdnet")

# Real models on one intra-op thread each (the suite runs on 2 worker processes): see tests/conftest.py.
pytestmark = pytest.mark.usefixtures("one_thread")


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


# --- the real models ------------------------------------------------------------------------------
# A fixed sample (the same models every run): every family, and within a family every code path that
# timm's tests could see differently (plain and bottleneck KAN convs, basic and bottleneck blocks, both
# CKAN variants, KAN and plain-conv simple nets, the 28 px MNIST stacks); each of the nine bases at least
# once, the deep nets with the cheaper ones. The whole set costs about 130 CPU-seconds.
SAMPLE_CLASSIFIERS = {
    "kan_vgg11_gram": "the published ImageNet architecture (kan_vgg11_gram.in1k): plain KAN convs, InstanceNorm",
    "kan_vgg11_bottleneck_gram": "VGG of bottleneck KAN convs (kan_vgg11_bottleneck_gram.in1k), BatchNorm",
    "kan_resnet18_bernstein": "ResNet basic blocks",
    "kan_resnet50_relu": "ResNet bottleneck blocks",
    "kan_densenet121_bspline": "DenseNet (C-kernel basis)",
    "kan_ckan_wavelet": "CKAN with its KAN head; the non-separable basis",
    "kan_ckan_multiscale_legendre": "multiscale CKAN",
    "kan_rdnet_tiny_chebyshev": "RDNet: patchify stem, dense blocks of depth-wise and 1x1 KAN convs, LayerNorm head",
    "kan_simple4_rbf": "4-layer simple net, three taps; rbf normalises its own input",
    "kan_simple8_jacobi": "8-layer simple net, four taps, odd sizes (28 -> 14 -> 7 -> 4)",
    "kan_simple4_conv": "the plain-conv baseline twin",
}
# The segmentation nets output a map: only the tests that take any output apply (see NOT_RUN_ON_SEGMENTATION).
SAMPLE_SEGMENTATION = {
    # The tiny nets have the full ones' topology; the full-width kan_unet_gram (256 px) and kan_u2net_small_*
    # added 19 s to the suite and no code path.
    "kan_unet_tiny_relu": "three-level U-Net",
    "kan_u2net_tiny_bernstein": "U2-Net topology at 2 / 8 channels",
}
SEGMENTATION_TESTS = ("test_model_forward", "test_model_forward_fx")
NOT_RUN_ON_SEGMENTATION = (
    "backward(_fx) asserts a (N, num_classes) output; default_cfgs needs pool_size and forward_features; "
    "features_only / forward_intermediates / pruning need feature_info: a dense predictor has none of these "
    "(kan_unet.py, kan_u2net.py); tests/models/test_kan_unet.py and test_kan_u2net.py test their FX traces"
)
_TORCHSCRIPT = (
    "torch.jit.script is deprecated in torch 2.14 (it warns to use torch.compile or torch.export), and the KAN "
    "conv core (fused autograd nodes that take the layer, C kernels, dispatch on runtime state) is not "
    "TorchScript; timm itself leaves densenet, hrnet and others out of these tests. kan_* models trace instead: "
    "torch.fx (above), torch.compile / torch.export and torch.jit.trace (tests/layers, tests/test_export.py)"
)
NOT_RUN = {
    "test_model_forward_torchscript": _TORCHSCRIPT,
    "test_model_forward_fx_torchscript": _TORCHSCRIPT,
    "test_model_default_cfgs_non_std": "timm's cfg test for its transformer / MLP models (NON_STD_FILTERS); "
                                       "kan_* models are standard and take test_model_default_cfgs",
}
# These load weights: run on the sampled architectures' published tags, served from the reference
# fixtures through an offline hub cache (as tests/models/test_pretrained.py does).
PRETRAINED_TESTS = ("test_model_load_pretrained", "test_model_features_pretrained")


def _registry_wide(test) -> bool:
    """Whether timm parametrises ``test`` over (a filtered view of) its registry rather than a few named
    models: hundreds of names at least, where its targeted tests list fewer than 30."""
    return any(mark.name == "parametrize" and mark.args[0] == "model_name" and len(mark.args[1]) > 100
               for mark in getattr(test, "pytestmark", []))


REGISTRY_WIDE = sorted(name for name, obj in vars(upstream).items() if name.startswith("test_") and _registry_wide(obj))
# A test a later timm release adds over its registry runs on the sample without an edit here.
CLASSIFIER_TESTS = [name for name in REGISTRY_WIDE if name not in NOT_RUN and name not in PRETRAINED_TESTS]
SAMPLE_PRETRAINED = sorted(
    tag for tag in timm.list_pretrained("kan_*") if tag.split(".")[0] in SAMPLE_CLASSIFIERS
)


def test_the_sample_covers_every_family_and_basis():
    sampled = {*SAMPLE_CLASSIFIERS, *SAMPLE_SEGMENTATION}
    families = [module for module in timm.list_modules() if module.startswith("kan_")]
    assert len(families) >= 7
    missing = [family for family in families if not sampled & set(timm.list_models(module=family))]
    assert not missing, f"families without a sampled model: {missing}"
    bases = {name.rsplit("_", 1)[1] for name in SAMPLE_CLASSIFIERS}
    assert set(kan_zoo.BASES) | {"conv"} == bases, sorted(set(kan_zoo.BASES) - bases)
    assert not [name for name in (*SAMPLE_CLASSIFIERS, *SAMPLE_SEGMENTATION) if name.startswith("kan_test_")]
    assert SAMPLE_PRETRAINED == ["kan_vgg11_bottleneck_gram.in1k", "kan_vgg11_gram.in1k"]


def test_every_registry_wide_upstream_test_runs_or_says_why_not():
    # The known ones are found (so the detection works), and every excuse names a test that exists.
    expected = {"test_model_forward", "test_model_backward", "test_model_default_cfgs", "test_model_forward_features",
                "test_model_forward_intermediates_features", "test_model_forward_intermediates",
                "test_prune_intermediate_layers_contract", "test_model_forward_fx", "test_model_backward_fx"}
    assert expected <= set(CLASSIFIER_TESTS), sorted(expected - set(CLASSIFIER_TESTS))
    assert set(NOT_RUN) <= set(REGISTRY_WIDE), sorted(set(NOT_RUN) - set(REGISTRY_WIDE))
    if "GITHUB_ACTIONS" not in os.environ:  # timm defines the pretrained tests only outside GitHub's runners
        assert set(PRETRAINED_TESTS) <= set(REGISTRY_WIDE)


@pytest.mark.parametrize("test_name", CLASSIFIER_TESTS)
@pytest.mark.parametrize("model_name", list(SAMPLE_CLASSIFIERS))
def test_upstream_on_real_classifiers(test_name, model_name):
    _call(test_name, model_name)


@pytest.mark.parametrize("test_name", SEGMENTATION_TESTS)
@pytest.mark.parametrize("model_name", list(SAMPLE_SEGMENTATION))
def test_upstream_on_real_segmentation_nets(test_name, model_name):
    _call(test_name, model_name)


@pytest.fixture(scope="module")
def reference_hub(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        serve_reference_checkpoints(mp, tmp_path_factory.mktemp("hf_home"), SAMPLE_PRETRAINED)
        yield


@pytest.mark.fixtures
@pytest.mark.parametrize("test_name", [name for name in PRETRAINED_TESTS if hasattr(upstream, name)])
@pytest.mark.parametrize("tag", SAMPLE_PRETRAINED)
def test_upstream_pretrained_on_real_classifiers(reference_hub, test_name, tag):
    _call(test_name, tag)
