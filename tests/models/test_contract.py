"""The model contract is declared on EnumModel: pipeline and decoding read attributes, never probe."""

import subprocess
from pathlib import Path

import pyro
import pyro.distributions as dist
import pytest
import torch

from enumdist.models import HMM, EnumModel
from enumdist.pipeline import guides

ROOT = Path(__file__).resolve().parents[2]


class Bare(EnumModel):
    """Only what the contract requires: model and num_observations."""

    def model(self, batch):
        loc = pyro.sample("loc", dist.Normal(0.0, 1.0))
        with pyro.plate("data", len(batch["x"])):
            z = pyro.sample("z", dist.Bernoulli(0.5), infer={"enumerate": "parallel"})
            pyro.sample("x", dist.Normal(loc + z, 1.0), obs=batch["x"])

    def num_observations(self, batch):
        return len(batch["x"])


def test_a_bare_model_gets_every_declared_default():
    model = Bare()
    assert model.guide is None and model.global_latents == () and model.init_loc_fn is None
    assert model.chains == ()
    assert model.transition_matrices() == {} and model.transition_conditions() == {}
    assert model.decoded_figures({}, {}, "t") == {}
    model.validate_items({"x": torch.zeros(2)}, "split 'test'")  # nothing to check
    model.create_parameters({})  # nothing to create
    assert isinstance(guides.auto(model), guides.EmptyGuide)  # no global latents: no guide


def test_default_guide_model_hides_enumerated_and_observed_sites():
    trace = pyro.poutine.trace(Bare().guide_model).get_trace({"x": torch.zeros(3)})
    assert "loc" in trace.nodes and "z" not in trace.nodes and "x" not in trace.nodes


def test_hmm_validates_its_piano_rolls_naming_the_item():
    model = HMM(num_keys=4, hidden_dim=2)
    batch = {
        "sequences": torch.full((1, 3, 4), 2.0),
        "lengths": torch.tensor([3]),
        "index": torch.tensor([7]),
    }
    with pytest.raises(ValueError, match="split 'test' item 7"):
        model.validate_items(batch, "split 'test'")


def test_pipeline_and_decoding_never_probe_the_model():
    found = subprocess.run(
        ["git", "grep", "-nE", r"(hasattr|getattr)\((self\.)?model\b", "enumdist/"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    ).stdout
    assert found == "", found
