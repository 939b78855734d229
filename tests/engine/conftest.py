import pyro
import pytest
import torch


@pytest.fixture(autouse=True)
def float64_and_clean_store():
    """Engine tests compare against Pyro in float64, each from an empty param store.

    Pyro's process-wide settings are pinned to their defaults as well: training sets
    ``module_local_params=True`` (``enumdist.pipeline.pyro_settings``), and a test
    that trained earlier in the same session would otherwise leak it in -- autoguides then refuse the
    zoo's global ``pyro.param`` statements (the order-dependent failure of the
    ``bayesian_mixture_*`` cases after ``tests/pipeline``).
    """
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(1)
    pyro.clear_param_store()
    with pyro.settings.context(module_local_params=False), pyro.validation_enabled(True):
        yield
    pyro.clear_param_store()
    torch.set_default_dtype(old)
