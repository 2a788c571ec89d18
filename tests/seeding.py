"""The suite's one base seed and the generators tests derive from it.

KAN_ZOO_TEST_SEED (default 0) is the base: conftest seeds torch's global RNG with it before every test
(so what a test builds does not depend on which tests ran before it), and tests that draw inputs take
``generator(offset)``, their own stream. Run the float-sensitive tests on other inputs with, e.g.,
``KAN_ZOO_TEST_SEED=7 pytest tests/layers``: every tolerance must hold for every seed.

Import as ``from seeding import ...`` (pytest puts ``tests/`` on sys.path).
"""
import os

import torch

BASE_SEED = int(os.environ.get("KAN_ZOO_TEST_SEED", "0"))


def generator(offset: int = 0) -> torch.Generator:
    """A CPU generator seeded with the base seed plus ``offset`` (one offset per stream a test needs)."""
    return torch.Generator().manual_seed(BASE_SEED + offset)
