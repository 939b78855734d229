import pyro
import pytest
import torch


@pytest.fixture(autouse=True)
def float64_and_clean_store():
    """Engine tests compare against Pyro in float64, each from an empty param store."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(1)
    pyro.clear_param_store()
    yield
    pyro.clear_param_store()
    torch.set_default_dtype(old)
