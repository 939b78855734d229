"""HMMs for a few very long sequences, trained with the chain's time axis split across ranks.

A batch is one *time block* of the same sequences (:class:`~enumdist.pipeline.time_split.
TimeSplitDataModule`): ``observations [N, T_r, ...]``, ``index = [r]`` and ``num_total = W``
(``W`` blocks, one per rank). The model adds one factor per block in the plate of blocks:

- one block (``num_total = 1``: one process, the whole chain) -- ``log p(y)`` of
  :class:`enumdist.DiscreteHMM`;
- ``W`` blocks on ``W`` ranks -- ``log p(y) / W`` from
  :meth:`enumdist.DiscreteHMM.time_sharded_log_prob` (the exact ``log p(y)`` of the whole
  chain on every rank, whose backward pass gives ``W`` x this block's share of the gradient),
  so that its value is ``1/W`` of ``log p(y)`` and its gradient this block's share.

The sharded ``EnumELBO`` sums the blocks' factors over the ranks (``log p(y)``) and its
all-reduce's backward hands each rank ``W`` x its factor's gradient; DDP's averaging then leaves
exactly the single-process gradient, as for any sharded plate. No site is enumerated (the chain
is summed out inside the factor), so the generic decoding stage does not apply: ``decodable``
is ``False``; the MAP path of a whole chain is :meth:`LongChainHMM.map_path` (time-sharded
Viterbi under ``torch.distributed``).
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
import torch.distributed as tdist
from torch import nn

from enumdist.distributions.hmm import DiscreteHMM
from enumdist.engine.time_sharding import TimeShardedChain
from enumdist.models.base import EnumModel


class LongChainHMM(EnumModel):
    """``x_{-1} ~ Cat(init)``, ``x_t ~ Cat(trans[x_{t-1}])``, ``y_t ~ observation_dist()[x_t]``;
    parameters are logits (and emission parameters) owned by the module."""

    shard_plate = "blocks"
    max_plate_nesting = 1
    decodable = False

    def __init__(self, hidden_dim: int, seed: int = 0):
        super().__init__()
        self.hidden_dim = hidden_dim
        generator = torch.Generator().manual_seed(seed)
        self.initial_logits = nn.Parameter(torch.zeros(hidden_dim))
        noise = 0.1 * torch.randn(hidden_dim, hidden_dim, generator=generator)
        self.transition_logits = nn.Parameter(2.0 * torch.eye(hidden_dim) + noise)
        self.init_emission(generator)

    def init_emission(self, generator: torch.Generator) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def observation_dist(self) -> dist.Distribution:  # pragma: no cover - abstract
        """The emission distribution batched over states (``batch_shape [S]``)."""
        raise NotImplementedError

    def hmm(self) -> DiscreteHMM:
        return DiscreteHMM(self.initial_logits, self.transition_logits, self.observation_dist())

    def transition_matrices(self) -> dict[str, torch.Tensor]:
        return {"x": self.transition_logits.detach().softmax(-1)}

    def num_observations(self, batch: dict) -> int:
        """One observation is one time step of one sequence (this block's)."""
        y = batch["observations"]
        return int(y.shape[0] * y.shape[1])

    def state_sites(self, batch: dict) -> dict:
        raise NotImplementedError(
            f"{type(self).__name__} enumerates no sites (the chain is summed out in one factor); "
            "the decoding stage does not apply: run with decode.enabled=false and decode with "
            f"{type(self).__name__}.map_path"
        )

    def model(self, batch: dict) -> None:
        blocks = int(batch["num_total"])
        y = batch["observations"].to(self.transition_logits.dtype)  # the parameters' precision
        with pyro.plate(self.shard_plate, blocks, subsample=batch["index"]):
            log_z = self.block_log_likelihood(y, blocks, batch["index"])
            pyro.factor("chain", log_z.unsqueeze(-1))

    def block_log_likelihood(self, y: torch.Tensor, blocks: int, index: torch.Tensor):
        """This block's factor (see the module docstring): ``log p(y)`` summed over the
        sequences, or ``1/W`` of it when ``y`` is block ``index[0]`` of ``W`` on ``W`` ranks."""
        if blocks == 1:
            return self.hmm().log_prob(y).sum()
        log_z = self.hmm().time_sharded_log_prob(y, self._time_sharded(blocks, index)).sum()
        # TimeShardedChain reads init on rank 0 only; DDP waits for a gradient of every
        # parameter on every rank, so the other ranks give it an exact zero
        return log_z / blocks + 0.0 * self.initial_logits.sum()

    def _time_sharded(self, blocks: int, index: torch.Tensor) -> TimeShardedChain:
        rank, world = (
            (tdist.get_rank(), tdist.get_world_size())
            if tdist.is_available() and tdist.is_initialized()
            else (0, 1)
        )
        if world != blocks or index.tolist() != [rank]:
            raise ValueError(
                f"{type(self).__name__}: the batch is time block {index.tolist()} of {blocks}, "
                f"but this process is rank {rank} of {world}: each of W ranks must hold block "
                "rank of W (enumdist.pipeline.time_split.TimeSplitDataModule does this)"
            )
        return TimeShardedChain()

    @torch.no_grad()
    def map_path(self, y: torch.Tensor) -> torch.Tensor:
        """The MAP state path ``[N, T]`` of the whole sequences ``y`` on one process, or of this
        rank's block ``[N, T_r]`` under ``torch.distributed`` (time-sharded Viterbi)."""
        if tdist.is_available() and tdist.is_initialized() and tdist.get_world_size() > 1:
            hmm = self.hmm()
            trans = hmm.transition_logits
            emissions = hmm_emissions(hmm, y)
            init = hmm.initial_logits.expand(emissions.shape[0], -1)
            return TimeShardedChain().map(init, trans, emissions)[0]
        return self.hmm().viterbi(y).states


def hmm_emissions(hmm: DiscreteHMM, y: torch.Tensor) -> torch.Tensor:
    """Emission log-probabilities ``[N, T, S]`` of ``y [N, T, ...]`` under ``hmm``."""
    from enumdist.distributions.emissions import observation_log_probs

    return observation_log_probs(hmm.observation_dist, y)


class GaussianLongChainHMM(LongChainHMM):
    """Normal emissions with learned means ``loc [S]`` and a fixed ``scale``."""

    def __init__(self, hidden_dim: int, scale: float = 1.0, loc_init_scale: float = 1.0, seed=0):
        self.scale, self.loc_init_scale = float(scale), float(loc_init_scale)
        super().__init__(hidden_dim, seed)

    def init_emission(self, generator):
        # evenly spread means (jittered): no two states start on the same mode
        loc = torch.linspace(-self.loc_init_scale, self.loc_init_scale, self.hidden_dim)
        self.loc = nn.Parameter(loc + 0.1 * torch.randn(self.hidden_dim, generator=generator))

    def observation_dist(self):
        return dist.Normal(self.loc, self.scale)


class BernoulliLongChainHMM(LongChainHMM):
    """Independent Bernoulli keys per state: ``emission_logits [S, K]`` (the chorale HMM's)."""

    def __init__(self, hidden_dim: int, num_keys: int = 88, seed: int = 0):
        self.num_keys = num_keys
        super().__init__(hidden_dim, seed)

    def init_emission(self, generator):
        noise = torch.randn(self.hidden_dim, self.num_keys, generator=generator)
        self.emission_logits = nn.Parameter(noise - 3.0)  # sparse chords: most keys silent

    def observation_dist(self):
        return dist.Bernoulli(logits=self.emission_logits).to_event(1)
