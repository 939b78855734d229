"""The HMM family for polyphonic music (piano rolls), written as python loops under ``pyro.markov``.

All share the batch layout, plates and site naming of :mod:`enumdist.models.hmm_base`.
Indexing with enumerated values goes through ``Vindex`` so that the enumeration dims on the left
broadcast against the ``keys`` plate on the right.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule
from pyro.ops.indexing import Vindex
from torch import nn

from enumdist.models.hmm_base import ChainModel, random_key_probs, random_simplex, random_transition

ENUM = {"enumerate": "parallel"}


class HMM(ChainModel):
    """x_t ~ Cat(transition[x_{t-1}]); notes_t[k] ~ Bernoulli(emission[x_t, k])."""

    def init_parameters(self):
        D, K = self.hidden_dim, self.num_keys
        self.initial = random_simplex(D)
        self.transition = random_transition(D, D)
        self.emission = random_key_probs(D, K)

    def transition_matrices(self):
        return {"x": self.transition.detach()}

    def model(self, batch):
        initial, transition, emission = self.initial, self.transition, self.emission
        self.parameter_prior(initial, transition, key_probs=(emission,))
        x = None
        for t, notes, keys in self.time_steps(batch):
            probs = initial if x is None else Vindex(transition)[x]
            x = pyro.sample(f"x_{t}", dist.Categorical(probs), infer=ENUM)
            with keys as k:
                pyro.sample(f"notes_{t}", dist.Bernoulli(Vindex(emission)[x, k]), obs=notes)


class AutoregressiveHMM(ChainModel):
    """Like :class:`HMM`, but each key's emission also depends on whether it sounded at t-1."""

    def init_parameters(self):
        D, K = self.hidden_dim, self.num_keys
        self.initial = random_simplex(D)
        self.transition = random_transition(D, D)
        self.emission = random_key_probs(D, 2, K)  # [state, key played at t-1, key]

    def transition_matrices(self):
        return {"x": self.transition.detach()}

    def model(self, batch):
        initial, transition, emission = self.initial, self.transition, self.emission
        self.parameter_prior(initial, transition, key_probs=(emission,))
        x, previous = None, None
        for t, notes, keys in self.time_steps(batch):
            probs = initial if x is None else Vindex(transition)[x]
            x = pyro.sample(f"x_{t}", dist.Categorical(probs), infer=ENUM)
            previous = torch.zeros_like(notes, dtype=torch.long) if previous is None else previous
            with keys as k:
                pyro.sample(
                    f"notes_{t}", dist.Bernoulli(Vindex(emission)[x, previous, k]), obs=notes
                )
            previous = notes.long()


class TwoChainHMM(ChainModel):
    """Two hidden chains: w evolves alone, x as :meth:`x_probs` says; each step's notes depend
    on both (``emission[w_t, x_t, key]``). Subclasses choose the parameters' shapes
    (:meth:`init_parameters`) and how x depends on w (:meth:`x_probs`)."""

    chains = ("w", "x")

    def transition_matrices(self):
        return {"w": self.transition_w.detach(), "x": self.transition_x.detach()}

    def x_probs(self, initial_x, transition_x, w, x):
        """The probabilities of ``x_t`` given ``w_t`` and ``x_{t-1}`` (``None`` at the first step);
        ``initial_x``, ``transition_x``: the parameters, read once per call of :meth:`model`."""
        raise NotImplementedError  # pragma: no cover - abstract

    def model(self, batch):
        initial_w, initial_x = self.initial_w, self.initial_x
        transition_w, transition_x, emission = self.transition_w, self.transition_x, self.emission
        self.parameter_prior(
            initial_w, initial_x, transition_w, transition_x, key_probs=(emission,)
        )
        w = x = None
        for t, notes, keys in self.time_steps(batch):
            probs_w = initial_w if w is None else Vindex(transition_w)[w]
            w = pyro.sample(f"w_{t}", dist.Categorical(probs_w), infer=ENUM)
            probs_x = self.x_probs(initial_x, transition_x, w, x)
            x = pyro.sample(f"x_{t}", dist.Categorical(probs_x), infer=ENUM)
            with keys as k:
                pyro.sample(f"notes_{t}", dist.Bernoulli(Vindex(emission)[w, x, k]), obs=notes)


class FactorialHMM(TwoChainHMM):
    """Two independent chains w and x; the emission depends on both."""

    def init_parameters(self):
        D, K = self.hidden_dim, self.num_keys
        self.initial_w, self.initial_x = random_simplex(D), random_simplex(D)
        self.transition_w, self.transition_x = random_transition(D, D), random_transition(D, D)
        self.emission = random_key_probs(D, D, K)

    def x_probs(self, initial_x, transition_x, w, x):
        return initial_x if x is None else Vindex(transition_x)[x]


class PartiallyFactorialHMM(TwoChainHMM):
    """Chain w evolves alone; chain x's transition depends on the current w; emission on both."""

    def init_parameters(self):
        D, K = self.hidden_dim, self.num_keys
        self.initial_w = random_simplex(D)
        self.initial_x = random_simplex(D, D)  # [w_0, x_0]
        self.transition_w = random_transition(D, D)
        self.transition_x = random_transition(D, D, D)  # [w_t, x_{t-1}, x_t]
        self.emission = random_key_probs(D, D, K)

    def transition_conditions(self):
        return {"x": ("w_t",)}

    def x_probs(self, initial_x, transition_x, w, x):
        return Vindex(initial_x)[w] if x is None else Vindex(transition_x)[w, x]


class NeuralEmissionHMM(ChainModel):
    """HMM whose emission logits come from a small network of (x_t, notes_{t-1})."""

    def __init__(
        self,
        num_keys: int = 88,
        hidden_dim: int = 16,
        seed: int = 0,
        prior_strength: float = 0.0,
        network_width: int = 32,
    ):
        self.network_width = network_width
        super().__init__(num_keys, hidden_dim, seed, prior_strength)

    def init_parameters(self):
        D, K, H = self.hidden_dim, self.num_keys, self.network_width
        self.initial = random_simplex(D)
        self.transition = random_transition(D, D)
        self.state_embedding = PyroModule[nn.Embedding](D, H)
        self.previous_notes = PyroModule[nn.Linear](K, H, bias=False)
        self.readout = PyroModule[nn.Linear](H, K)

    def transition_matrices(self):
        return {"x": self.transition.detach()}

    def emission_logits(self, x: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
        """``x``: states shaped ``[..., B or 1, 1]``; ``previous``: ``[B, K]`` -> ``[..., B, K]``."""
        hidden = self.state_embedding(x.squeeze(-1)) + self.previous_notes(previous)
        return self.readout(torch.relu(hidden))

    def model(self, batch):
        initial, transition = self.initial, self.transition
        self.parameter_prior(initial, transition)
        x, previous = None, None
        for t, notes, keys in self.time_steps(batch):
            probs = initial if x is None else Vindex(transition)[x]
            x = pyro.sample(f"x_{t}", dist.Categorical(probs), infer=ENUM)
            previous = torch.zeros_like(notes) if previous is None else previous
            with keys:
                pyro.sample(
                    f"notes_{t}",
                    dist.Bernoulli(logits=self.emission_logits(x, previous)),
                    obs=notes,
                )
            previous = notes


class SecondOrderHMM(ChainModel):
    """x_t depends on (x_{t-2}, x_{t-1}); x_1 on x_0 through a first-step transition."""

    def init_parameters(self):
        D, K = self.hidden_dim, self.num_keys
        self.initial = random_simplex(D)
        self.first_transition = random_transition(D, D)
        self.transition = random_transition(D, D, D)  # [x_{t-2}, x_{t-1}, x_t]
        self.emission = random_key_probs(D, K)

    def transition_matrices(self):
        return {"x": self.transition.detach()}  # [x_{t-2}, x_{t-1}, x_t]

    def transition_conditions(self):
        return {"x": ("x_{t-2}",)}

    def model(self, batch):
        initial, first, transition = self.initial, self.first_transition, self.transition
        emission = self.emission
        self.parameter_prior(initial, first, transition, key_probs=(emission,))
        before = x = None
        for t, notes, keys in self.time_steps(batch, history=2):
            if x is None:
                probs = initial
            elif before is None:
                probs = Vindex(first)[x]
            else:
                probs = Vindex(transition)[before, x]
            before, x = x, pyro.sample(f"x_{t}", dist.Categorical(probs), infer=ENUM)
            with keys as k:
                pyro.sample(f"notes_{t}", dist.Bernoulli(Vindex(emission)[x, k]), obs=notes)
