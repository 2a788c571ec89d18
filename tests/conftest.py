import atexit
import os
import shutil
import tempfile
from typing import Iterator

import pytest
import torch

from reference_fixtures import FIXTURES
from seeding import BASE_SEED

if "KAN_ZOO_KERNEL_CACHE" not in os.environ:
    # The C kernels (kan_zoo.layers.kernels.native_kernels) build into a cache of this test process, not the user's.
    os.environ["KAN_ZOO_KERNEL_CACHE"] = tempfile.mkdtemp(prefix="kan_zoo_kernels_")
    atexit.register(shutil.rmtree, os.environ["KAN_ZOO_KERNEL_CACHE"], ignore_errors=True)


def pytest_addoption(parser):
    parser.addoption("--reverse-order", action="store_true",
                     help="run the collected tests last to first (a check that no test depends on the ones before it; "
                          "for random orders: -p randomly --randomly-seed=N, pytest-randomly being off by default)")


def pytest_configure(config):
    config.addinivalue_line("markers", "fixtures: needs ../shared/fixtures/torch_conv_kan")


@pytest.hookimpl(trylast=True)  # after any other reordering
def pytest_collection_modifyitems(config, items):
    if config.getoption("--reverse-order"):
        items.reverse()


@pytest.fixture(autouse=True)
def _seed():
    # Every test starts from the same global RNG state whatever ran before it (order, xdist worker);
    # KAN_ZOO_TEST_SEED moves the base (tests/seeding.py).
    torch.manual_seed(BASE_SEED)


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """One intra-op thread for a module's tests: ``pytestmark = pytest.mark.usefixtures("one_thread")``.

    Tiny convs gain nothing from intra-op threads, and on a loaded 2-core box (pytest -n 2) the
    thread pools oversubscribe the cores and make each forward 10-100x slower.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
