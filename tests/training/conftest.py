"""Shared fixtures: a tiny image-folder dataset and a clean accelerate state per test."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def write_image_folder(root: Path, per_class: dict, classes: int = 3, size: int = 16, seed: int = 0) -> Path:
    """Class c images are noise with a bright channel c % 3: learnable, a few dozen files."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, n in per_class.items():
        for c in range(classes):
            d = root / split / f"class_{c}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                a = rng.integers(0, 80, (size, size, 3))
                a[..., c % 3] += 150
                Image.fromarray(a.astype("uint8")).save(d / f"{i}.png")
    return root


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory) -> Path:
    root = write_image_folder(tmp_path_factory.mktemp("tiny"), {"train": 12, "validation": 5})
    (root / "train" / "class_0" / "corrupt.png").write_bytes(b"this is not a png")
    return root


@pytest.fixture(scope="session")
def two_class_folder(tmp_path_factory) -> Path:
    """Another task for fine-tuning tests: two classes instead of tiny_folder's three."""
    return write_image_folder(tmp_path_factory.mktemp("two"), {"train": 8, "validation": 4}, classes=2, seed=1)


@pytest.fixture(autouse=True)
def _fresh_accelerate():
    """main() may run several times in one test process: reset accelerate's singletons each time."""
    import torch
    from accelerate.state import AcceleratorState, GradientState, PartialState

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: threads only add contention on a 2-core box
    yield
    torch.set_num_threads(threads)
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    PartialState._reset_state()


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: multi-process end-to-end runs (tens of seconds); run in CI too")
