"""The package as a user gets it: an sdist and a wheel built from the checkout, checked by twine, and the
wheel installed into a fresh virtual environment in a temp dir where the checkout is NOT importable.

Offline: the build runs with --no-isolation (this environment's setuptools) and pip installs the wheel
with --no-deps --no-index. The fresh venv sees this environment's third-party packages through a .pth
line (a plain path: the .pth files in it, among them kan_zoo's editable-install hook, are not run), so the
only kan_zoo it can import is the installed wheel's.
"""
from __future__ import annotations

import email.parser
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import textwrap
import zipfile
from pathlib import Path
from typing import Dict, List

import pytest

import kan_zoo

ROOT = Path(__file__).resolve().parents[1]
# What a source tree needs for a build, without the environment, caches and results around it.
_NOT_SOURCE = shutil.ignore_patterns(".git", ".venv", ".upstream", "__pycache__", "*.egg-info", "build", "dist",
                                     "runs", "outputs", ".pytest_cache")
# The test tools and heavy extras that `pip install kan_zoo` must not pull in.
_NOT_IN_BASE = {"pytest", "pytest-xdist", "transformers", "segmentation-models-pytorch", "build", "twine",
                "accelerate", "datasets", "scikit-learn", "matplotlib", "onnx", "onnxscript", "onnxruntime"}

pytestmark = pytest.mark.xdist_group("packaging")  # one worker builds once for the whole module


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Dict[str, Path]:
    pytest.importorskip("build", reason="the test extra installs `build`")
    work = tmp_path_factory.mktemp("packaging")
    source = work / "source"
    shutil.copytree(ROOT, source, ignore=_NOT_SOURCE, symlinks=True)
    out = work / "dist"
    subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(source)],
                   check=True, capture_output=True, text=True)
    (wheel,) = out.glob("*.whl")
    (sdist,) = out.glob("*.tar.gz")
    return {"work": work, "wheel": wheel, "sdist": sdist}


def _wheel_metadata(wheel: Path):
    with zipfile.ZipFile(wheel) as z:
        name = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        return email.parser.Parser().parsestr(z.read(name).decode())


def _requirement_name(requirement: str) -> str:
    for stop in "<>=!~[; ":
        requirement = requirement.split(stop, 1)[0]
    return requirement.lower()


def test_twine_check_passes(dist):
    pytest.importorskip("twine", reason="the test extra installs `twine`")
    result = subprocess.run([sys.executable, "-m", "twine", "check", "--strict", str(dist["wheel"]),
                             str(dist["sdist"])], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("PASSED") == 2, result.stdout


def test_c_sources_ship_in_wheel_and_sdist(dist):
    in_checkout = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "kan_zoo").rglob("csrc/*")
                         if p.suffix in (".c", ".h"))
    assert len(in_checkout) >= 5, in_checkout  # bspline, relu, rbf, wavelet + the shared header
    with zipfile.ZipFile(dist["wheel"]) as z:
        wheel_files = set(z.namelist())
    with tarfile.open(dist["sdist"]) as t:
        prefix = t.getnames()[0].split("/", 1)[0]
        sdist_files = {n.split("/", 1)[1] for n in t.getnames() if "/" in n}
    assert prefix == f"kan_zoo-{kan_zoo.__version__}"
    for path in in_checkout:
        assert path in wheel_files, path
        assert path in sdist_files, path
    assert {"LICENSE", "README.md", "CHANGELOG.md", "pyproject.toml"} <= sdist_files
    assert not any(n.startswith(("tests/", "benchmarks/", "scripts/")) for n in wheel_files)


def test_metadata_version_licence_urls_extras(dist):
    meta = _wheel_metadata(dist["wheel"])
    assert meta["Name"] == "kan_zoo" and meta["Version"] == kan_zoo.__version__
    assert meta["License-Expression"] == "MIT"
    assert meta.get_all("Classifier") and meta.get_all("Project-URL")
    assert meta["Description-Content-Type"] == "text/markdown"
    extras = set(meta.get_all("Provides-Extra"))
    assert {"train", "viz", "export", "all", "test"} <= extras
    requires: List[str] = meta.get_all("Requires-Dist")
    base = {_requirement_name(r) for r in requires if "extra ==" not in r}
    assert base == {"torch", "torchvision", "timm", "huggingface-hub", "safetensors"}, base
    assert not base & _NOT_IN_BASE
    train = {_requirement_name(r) for r in requires if 'extra == "train"' in r}
    assert {"accelerate", "datasets"} <= train


def _fresh_venv(dist) -> Path:
    """A venv with the wheel installed, seeing this environment's third-party packages but not the checkout."""
    venv = dist["work"] / "venv"
    if not venv.exists():
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
        subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install",
                        "--no-deps", "--no-index", "--quiet", str(dist["wheel"])], check=True, capture_output=True)
        fresh = subprocess.run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()"
                                "['purelib'])"], check=True, capture_output=True, text=True).stdout.strip()
        ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
        Path(fresh, "_kan_zoo_test_dependencies.pth").write_text("\n".join(sorted(ours)) + "\n")
    return venv


def _run_in_venv(venv: Path, args: List[str], home: Path, **kwargs) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "KAN_ZOO_KERNEL_CACHE", "PYTHONHOME")}
    env.update(HOME=str(home), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", XDG_CACHE_HOME=str(home / ".cache"))
    home.mkdir(exist_ok=True)
    return subprocess.run(args, cwd=home, env=env, capture_output=True, text=True, timeout=600, **kwargs)


_SMOKE = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    import torch, timm
    import kan_zoo
    from kan_zoo.hub import export_to_folder

    checkout = sys.argv[1]
    assert not any(p and Path(p).resolve() == Path(checkout).resolve() for p in sys.path), sys.path
    torch.manual_seed(0)
    model = timm.create_model("kan_resnet18_bspline", num_classes=10)
    x = torch.randn(2, 3, 32, 32)
    out = model(x)
    out.square().mean().backward()
    grads = all(p.grad is not None for p in model.parameters() if p.requires_grad)
    model.eval()
    folder = export_to_folder(model, Path("export"))
    reloaded = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    with torch.no_grad():
        same = torch.equal(model(x), reloaded(x))
    loaded = sorted(n for n in sys.modules if n.split(".")[0] in
                    ("accelerate", "datasets", "sklearn", "matplotlib", "onnx", "pytest"))
    print(json.dumps(dict(file=kan_zoo.__file__, version=kan_zoo.__version__, shape=list(out.shape),
                          grads=grads, same=same, native=kan_zoo.layers.native_kernels_enabled(),
                          heavy_modules=loaded)))
""")


def test_wheel_works_in_a_fresh_venv_outside_the_checkout(dist):
    venv = _fresh_venv(dist)
    home = dist["work"] / "home"
    result = _run_in_venv(venv, [str(venv / "bin" / "python"), "-c", _SMOKE, str(ROOT)], home)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert Path(report["file"]).resolve().is_relative_to(venv.resolve()), report["file"]
    assert report["version"] == kan_zoo.__version__
    assert report["shape"] == [2, 10] and report["grads"] and report["same"]
    assert report["native"]
    assert report["heavy_modules"] == []  # models alone do not import training, plot or test tools
    # The bspline layers built their C kernel from the installed sources into the user's cache.
    built = list((home / ".cache" / "kan_zoo" / "kernels").glob("*.so"))
    assert built, sorted(p.relative_to(home).as_posix() for p in home.rglob("*") if p.is_file())[:20]


@pytest.mark.parametrize("command,option", [
    (["kan-zoo-train", "--help"], "--model"),
    (["python", "-m", "kan_zoo.training", "--help"], "--model"),
    (["kan-zoo-hub", "export", "--help"], "--model"),
], ids=["kan-zoo-train", "python-m-kan_zoo.training", "kan-zoo-hub"])
def test_entry_points_answer_help(dist, command, option):
    venv = _fresh_venv(dist)
    executable = venv / "bin" / command[0]
    result = _run_in_venv(venv, [str(executable), *command[1:]], dist["work"] / "home")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("usage:") and option in result.stdout, result.stdout


def test_training_without_the_train_extra_names_the_install(dist):
    """Where accelerate / datasets are not installed, the entry point says which extra to install."""
    venv = _fresh_venv(dist)
    # None in sys.modules is how Python marks a module as not importable: find_spec returns None for it.
    hide = "import sys; sys.modules.update(accelerate=None, datasets=None); sys.argv = ['kan-zoo-train', '--help']; "
    result = _run_in_venv(venv, [str(venv / "bin" / "python"), "-c",
                                 hide + "from kan_zoo.training.__main__ import cli; cli()"], dist["work"] / "home")
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stderr.strip() == ("error: training needs accelerate and datasets, which "
                                     "`pip install 'kan_zoo[train]'` installs")
