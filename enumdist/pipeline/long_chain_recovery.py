"""Did training on one long synthetic chain find the truth? (``experiment=long_chain``)

The chain comes from known parameters (:func:`enumdist.data.long_chain.synthetic_long_chain`:
``init``, ``trans`` logits, Normal means ``loc``, unit scale). A learned
:class:`~enumdist.models.long_chain_hmm.GaussianLongChainHMM` is compared with them after
relabelling its states (Hungarian matching on the means,
:func:`enumdist.pipeline.recovery.match_states`):

``max_abs_error_loc``         largest ``|loc_learned - loc_true|``;
``max_abs_error_transition``  largest error of a transition probability;
``max_row_tv``                largest total variation ``0.5 sum_j |A_ij - B_ij|`` of a row;
``map_agreement``             share of steps of a held-out chain whose MAP state (relabelled)
                              equals the MAP state under the true parameters.
"""

from __future__ import annotations

import numpy as np
import pyro.distributions as dist
import torch

from enumdist.distributions.hmm import DiscreteHMM
from enumdist.pipeline.recovery import match_states


def fit_full_batch(model, y: torch.Tensor, steps: int, lr: float = 0.05) -> list[float]:
    """Adam on ``-log p(y) / y.numel()`` of the whole chain ``y [N, T]`` (one process: what
    the time-sharded pipeline computes exactly); -> the loss per step."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    history = []
    for _ in range(steps):
        loss = -model.hmm().log_prob(y.to(model.loc.dtype)).sum() / y.numel()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(float(loss.detach()))
    return history


@torch.no_grad()
def long_chain_recovery(model, truth: dict, y_eval: torch.Tensor, scale: float = 1.0) -> dict:
    """The figures of the module docstring for ``model`` against ``truth`` on ``y_eval``."""
    true_loc = truth["loc"].double().numpy()
    learned_loc = model.loc.detach().double().numpy()
    relabel = match_states(true_loc[:, None], learned_loc[:, None])
    if len(learned_loc) != len(true_loc) or (relabel < 0).any():
        return {"same_state_count": False, "map_agreement": 0.0}
    order = np.argsort(relabel)  # learned state playing true state s is order[s]
    true_a = truth["trans"].double().softmax(-1).numpy()
    learned_a = model.transition_logits.detach().double().softmax(-1).numpy()[np.ix_(order, order)]
    dtype = model.loc.dtype
    true_hmm = DiscreteHMM(
        truth["init"].to(dtype),
        truth["trans"].to(dtype),
        dist.Normal(truth["loc"].to(dtype), scale),
    )
    reference = true_hmm.viterbi(y_eval.to(dtype)).states
    decoded = torch.as_tensor(relabel)[model.hmm().viterbi(y_eval.to(dtype)).states]
    return {
        "same_state_count": True,
        "max_abs_error_loc": float(np.abs(learned_loc[order] - true_loc).max()),
        "max_abs_error_transition": float(np.abs(learned_a - true_a).max()),
        "max_row_tv": float((0.5 * np.abs(learned_a - true_a).sum(-1)).max()),
        "map_agreement": float((decoded == reference).double().mean()),
    }
