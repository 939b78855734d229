"""Recovery of the truth from one long chain (``experiment=long_chain``, small): the learned
Gaussian HMM matches the known parameters after relabelling, and the same checks reject a
chain whose time order was shuffled (same values, no Markov structure)."""

import pytest
import torch

from enumdist.data.long_chain import synthetic_long_chain, synthetic_long_chain_split
from enumdist.models.long_chain_hmm import GaussianLongChainHMM
from enumdist.pipeline.long_chain_recovery import fit_full_batch, long_chain_recovery

STEPS, STATES, SEED = 4000, 3, 1  # seed 1: no state rarer than ~15% of the steps


def recovered(shuffle: bool) -> dict:
    truth, _ = synthetic_long_chain(2, STATES, seed=SEED)
    y = synthetic_long_chain_split("train", STEPS, STATES, seed=SEED)["observations"]
    if shuffle:
        y = y[:, torch.randperm(STEPS, generator=torch.Generator().manual_seed(0))]
    model = GaussianLongChainHMM(STATES, loc_init_scale=2.0, seed=0).double()
    history = fit_full_batch(model, y, steps=120)
    assert history[-1] < history[0]
    y_eval = synthetic_long_chain_split("valid", STEPS, STATES, seed=SEED)["observations"]
    return long_chain_recovery(model, truth, y_eval)


@pytest.mark.slow
def test_training_on_one_long_chain_recovers_the_truth_and_a_shuffled_chain_does_not():
    report = recovered(shuffle=False)
    assert report["max_abs_error_loc"] < 0.15, report
    assert report["max_row_tv"] < 0.05, report
    assert report["map_agreement"] > 0.97, report
    control = recovered(shuffle=True)
    assert control["max_row_tv"] > 0.3, control  # the transitions are not found
