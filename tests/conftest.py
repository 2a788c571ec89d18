from typing import Iterator

import pytest
import torch

from reference_fixtures import FIXTURES


def pytest_configure(config):
    config.addinivalue_line("markers", "fixtures: needs ../shared/fixtures/torch_conv_kan")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


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
