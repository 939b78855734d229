"""Shared scaffolding of the HMM family: plates, time loop, length masks, seeded initialisation.

Every HMM-family model sees ``batch`` with

``sequences``  float ``[B, T, K]`` piano rolls (0/1), zero-padded after each sequence's length;
``lengths``    long ``[B]``;
``index``      long ``[B]`` positions of the sequences in the split;
``num_total``  int, the split's size.

Plates: ``sequences`` (the shard plate, dim -2) contains ``keys`` (dim -1) for the emission.
Hidden chains are sampled at sites ``{chain}_{t}`` (``x_0, x_1, ...``; factorial models add
``w_{t}``) so that decoding can gather the states per time step (:meth:`ChainModel.state_sites`).
Padded steps are handled with ``poutine.mask(t < lengths)``: the emission of a padded step is
masked out, and its enumerated state still sums to one, so padding changes nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.nn import PyroParam
from torch.distributions import constraints

from enumdist.data.piano_roll import validate_piano_roll
from enumdist.models.base import EnumModel


@contextlib.contextmanager
def seeded(seed: int):
    """Run the block under ``torch.manual_seed(seed)`` without disturbing the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def random_transition(*shape: int, stickiness: float = 0.9) -> PyroParam:
    """A simplex-constrained ``[..., D, D]`` transition parameter that prefers to stay put."""
    num_states = shape[-1]
    noise = torch.rand(shape)
    probs = (1 - stickiness) * noise / noise.sum(-1, keepdim=True)
    probs = probs + stickiness * torch.eye(num_states).expand(shape)
    return PyroParam(probs / probs.sum(-1, keepdim=True), constraint=constraints.simplex)


def random_simplex(*shape: int) -> PyroParam:
    noise = torch.rand(shape) + 0.5
    return PyroParam(noise / noise.sum(-1, keepdim=True), constraint=constraints.simplex)


def random_key_probs(*shape: int) -> PyroParam:
    """Emission probabilities per key, spread over [0.05, 0.35] so states differ from the start."""
    return PyroParam(0.05 + 0.3 * torch.rand(shape), constraint=constraints.unit_interval)


class ChainModel(EnumModel):
    """Base of the HMM family. Subclasses define :meth:`model` with :meth:`time_steps`."""

    shard_plate = "sequences"
    max_plate_nesting = 2
    #: names of the hidden chains; site of chain ``c`` at step ``t`` is ``f"{c}_{t}"``
    chains: tuple[str, ...] = ("x",)

    def __init__(
        self, num_keys: int = 88, hidden_dim: int = 16, seed: int = 0, prior_strength: float = 0.0
    ):
        """``prior_strength`` > 0 adds a MAP prior on the parameters: ``Dirichlet(1 + s)`` on each
        probability vector and ``Beta(1 + s, 1 + s)`` on each key probability (0 = maximum
        likelihood)."""
        super().__init__()
        if prior_strength < 0:
            raise ValueError(f"prior_strength must be >= 0, got {prior_strength}")
        self.num_keys = num_keys
        self.hidden_dim = hidden_dim
        self.prior_strength = prior_strength
        with seeded(seed):
            self.init_parameters()

    def init_parameters(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    # ---- contract -------------------------------------------------------------------------
    def num_observations(self, batch: dict[str, torch.Tensor]) -> int:
        """One observation is one time step (a chord of ``num_keys`` notes), as in the field."""
        return int(batch["lengths"].sum())

    def state_sites(self, batch: dict[str, torch.Tensor]) -> dict[str, list[str]]:
        """Hidden chain name -> its sample sites in time order."""
        num_steps = batch["sequences"].shape[1]
        return {c: [f"{c}_{t}" for t in range(num_steps)] for c in self.chains}

    def validate_items(self, batch: dict[str, torch.Tensor], where: str) -> None:
        """Every item must be a valid piano roll of ``num_keys`` keys up to its length."""
        for row, (roll, length) in enumerate(zip(batch["sequences"], batch["lengths"])):
            validate_piano_roll(
                roll[: int(length)],
                num_keys=self.num_keys,
                name=f"{where} item {int(batch['index'][row])}",
            )

    def decoded_figures(self, table: dict, first: dict, title: str) -> dict:
        """Transition matrices, and the first item's piano roll under its decoded states."""
        from enumdist.decoding import pictures  # matplotlib only where pictures are drawn

        roll = table["sequences"][first["index"], : first["length"]]
        states = {c: torch.tensor(first[c]) for c in self.chains}
        return {
            "transitions": pictures.transition_figure(
                self.transition_matrices(), self.transition_conditions()
            ),
            "piano_roll": pictures.piano_roll_figure(
                roll,
                states,
                {c: self.hidden_dim for c in self.chains},
                title=f"{title}: decoded hidden states",
            ),
        }

    # ---- helpers for subclasses -----------------------------------------------------------
    def check_batch(self, batch: dict[str, torch.Tensor]) -> None:
        sequences, lengths = batch["sequences"], batch["lengths"]
        if sequences.dim() != 3 or sequences.shape[-1] != self.num_keys:
            raise ValueError(
                f"{type(self).__name__}: batch['sequences'] must be [B, T, {self.num_keys}] "
                f"(num_keys={self.num_keys}), got {tuple(sequences.shape)}; "
                "set model.num_keys to the data's number of keys"
            )
        if lengths.shape != sequences.shape[:1]:
            raise ValueError(
                f"batch['lengths'] must be [{sequences.shape[0]}], got {tuple(lengths.shape)}"
            )

    def parameter_prior(
        self, *probability_vectors: torch.Tensor, key_probs: tuple[torch.Tensor, ...] = ()
    ) -> None:
        """Add the MAP prior as a global factor (nothing when ``prior_strength == 0``)."""
        if self.prior_strength == 0:
            return
        s = self.prior_strength
        log_prior = sum(
            dist.Dirichlet(torch.full_like(p, 1 + s)).log_prob(p).sum() for p in probability_vectors
        )
        for p in key_probs:
            log_prior = log_prior + dist.Beta(1 + s, 1 + s).log_prob(p.clamp(1e-6, 1 - 1e-6)).sum()
        pyro.factor("parameter_prior", log_prior)

    def time_steps(
        self, batch: dict[str, torch.Tensor], history: int = 1
    ) -> Iterator[tuple[int, torch.Tensor, pyro.plate]]:
        """Yield ``(t, notes_t [B, K], keys_plate)`` inside the sequences plate, under
        ``pyro.markov(history=history)`` and the length mask of step ``t``."""
        self.check_batch(batch)
        sequences, lengths = batch["sequences"], batch["lengths"]
        keys = pyro.plate("keys", self.num_keys, dim=-1)
        with pyro.plate(self.shard_plate, batch["num_total"], subsample=batch["index"], dim=-2):
            for t in pyro.markov(range(sequences.shape[1]), history=history):
                with poutine.mask(mask=(t < lengths).unsqueeze(-1)):
                    yield t, sequences[:, t], keys
