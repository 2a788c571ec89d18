import pytest
import torch

from reference_fixtures import FIXTURES


def pytest_configure(config):
    config.addinivalue_line("markers", "fixtures: needs ../shared/fixtures/torch_conv_kan")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
