"""The plain HMM with time as a tensor dim: the fast path a user picks when the model allows it.

:class:`VectorisedHMM` has exactly :class:`~enumdist.models.hmm.HMM`'s parameters (a checkpoint
of one loads into the other) and the same joint, but instead of one enumerated site per step it
adds the chain marginal ``log p(sequence)`` as one factor per sequence, computed by the fused
forward-backward kernels of :mod:`enumdist.engine.chain` from all steps' emission log-probs (one
matmul). No site is enumerated, so it has no states to decode: decode with ``HMM`` on the same
checkpoint. Sharding works as for any factor in the ``sequences`` plate.
"""

from __future__ import annotations

import pyro

from enumdist.engine.chain import bernoulli_emission_log_probs, chain_log_likelihood
from enumdist.models.hmm import HMM


class VectorisedHMM(HMM):
    """``HMM`` whose marginal over the hidden chain is one fused kernel call per batch."""

    def state_sites(self, batch):
        raise NotImplementedError(
            "VectorisedHMM enumerates no sites; decode its checkpoint with "
            "model._target_=enumdist.models.HMM (same parameters)"
        )

    def model(self, batch):
        initial, transition, emission = self.initial, self.transition, self.emission
        self.parameter_prior(initial, transition, key_probs=(emission,))
        self.check_batch(batch)
        sequences, lengths = batch["sequences"], batch["lengths"]
        emissions = bernoulli_emission_log_probs(sequences, emission)  # [B, T, D]
        log_z = chain_log_likelihood(
            initial.log(), transition.log(), emissions, lengths.clamp(min=1)
        )
        with pyro.plate(self.shard_plate, batch["num_total"], subsample=batch["index"], dim=-2):
            pyro.factor("chain", log_z.unsqueeze(-1))
