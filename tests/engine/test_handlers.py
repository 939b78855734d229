"""The engine's handlers check their arguments when built, as Pyro's poutine handlers do."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine

from enumdist.engine.handlers import AsParallel, EnumRequests, FixValues


def test_enum_requests_rejects_a_non_negative_dim_and_an_unknown_program():
    with pytest.raises(ValueError, match="first_available_dim"):
        EnumRequests(0, "model")
    with pytest.raises(ValueError, match="'model' or 'guide'"):
        EnumRequests(-2, "prior")


def test_fix_values_needs_a_mapping():
    with pytest.raises(TypeError, match="map site names"):
        FixValues([("z", 1)])


def test_fix_values_and_as_parallel_act_on_their_sites():
    def model():
        pyro.sample("z", dist.Categorical(torch.ones(3)), infer={"enumerate": "sequential"})

    trace = poutine.trace(AsParallel()(FixValues({"z": torch.tensor(2)})(model))).get_trace()
    assert trace.nodes["z"]["value"].item() == 2
    assert trace.nodes["z"]["infer"]["enumerate"] == "parallel"
