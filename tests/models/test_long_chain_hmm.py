"""LongChainHMM: its factor is DiscreteHMM's log p(y); its MAP path on 2 ranks (time-sharded
Viterbi) is the one-process path."""

import pyro.distributions as dist
import pytest
import torch

from enumdist.data.long_chain import synthetic_long_chain
from enumdist.models.long_chain_hmm import BernoulliLongChainHMM, GaussianLongChainHMM
from tests.engine.spawn import run_ranks
from tests.models import long_chain_map_worker


def test_the_factor_is_the_chain_log_likelihood():
    model = BernoulliLongChainHMM(4, num_keys=5, seed=1).double()
    y = torch.bernoulli(torch.full((2, 30, 5), 0.3, dtype=torch.float64))
    expected = dist.DiscreteHMM(
        model.initial_logits,
        model.transition_logits,
        dist.Bernoulli(logits=model.emission_logits).to_event(1),
    ).log_prob(y)
    factor = model.block_log_likelihood(y, 1, torch.tensor([0]))
    torch.testing.assert_close(factor, expected.sum(), rtol=1e-10, atol=0)


@pytest.mark.slow
def test_map_path_on_two_ranks_is_the_one_process_path(tmp_path):
    _, y = synthetic_long_chain(3001, 3, num_sequences=2, seed=1)
    model = GaussianLongChainHMM(3, seed=0).double()
    whole = model.map_path(y)
    blocks = [r["block"] for r in run_ranks(long_chain_map_worker.main, 2, tmp_path, 120)]
    assert torch.equal(torch.cat(blocks, dim=1), whole)
