"""Lazy factors: a site's log-prob kept as its parts, so a product over plates becomes a matmul.

An observed emission inside plates (notes of a piano roll given the hidden state) is the largest
tensor of an HMM step: ``states x sequences x keys``. It is only ever summed over ``keys``
before anything else touches it. For a Bernoulli,
``log p(y | logits) = y * logits - softplus(logits)``, so that sum is an einsum of the small
parts (``sequences x keys`` data, ``states x keys`` logits) and the big tensor is never built.

A lazy factor offers ``dims``, ``sizes`` and ``sum(dim=...)`` like a named tensor, and
``tensor`` to materialise it when a step needs the full product. Which distribution becomes
which lazy factor is decided in :mod:`enumdist.engine.distribution_rules`; a site whose
distribution has no rule there is evaluated eagerly.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.distributions.utils import probs_to_logits

from enumdist.engine.factors import Factor, align


class LazyBernoulliLogProb:
    """Masked ``log Bernoulli(value | param)`` as (param, value, mask), each a named tensor.

    ``param`` holds logits, or probs (``is_logits=False``) turned into logits on first use:
    :func:`stack` stacks the probs of many sites first, so one ``log`` serves them all.
    """

    def __init__(self, param, value, mask, is_logits=True):
        # dims in order value, mask, param: plates first, so a plate sum comes out
        # ``[..., plates, variable]`` -- the time-major, state-last layout the chain kernels read
        self.parts = [p for p in (value, mask, param) if p is not None]
        self.param, self.value, self.mask, self.is_logits = param, value, mask, is_logits
        self._logits = param if is_logits else None
        dims = {}
        for part in self.parts:
            dims.update(dict.fromkeys(part.dims))
        self.dims = tuple(dims)
        self.sizes = {}
        for part in self.parts:
            self.sizes.update(part.sizes)

    def element_size(self) -> int:
        return self.param.tensor.element_size()

    @property
    def logits(self) -> Factor:
        if self._logits is None:
            self._logits = Factor(
                probs_to_logits(self.param.tensor, is_binary=True), self.param.dims
            )
        return self._logits

    @property
    def data(self):
        return self

    @property
    def tensor(self) -> torch.Tensor:
        logits = align(self.logits.tensor, self.logits.dims, self.dims)
        value = align(self.value.tensor, self.value.dims, self.dims)
        log_p = value * logits - F.softplus(logits)
        if self.mask is not None:
            log_p = torch.where(
                align(self.mask.tensor, self.mask.dims, self.dims), log_p, log_p.new_zeros(())
            )
        return log_p.expand(tuple(self.sizes[d] for d in self.dims))

    def sum(self, dim) -> torch.Tensor:
        """Sum over the dims at positions ``dim`` (plates), without building the product."""
        reduced = {self.dims[i] for i in dim}
        out_dims = tuple(d for d in self.dims if d not in reduced)
        letters = {d: chr(ord("a") + i) for i, d in enumerate(self.dims)}

        def einsum(parts):
            present = {d for p in parts for d in p[1]}
            spec = ",".join("".join(letters[d] for d in dims) for _, dims in parts)
            kept = tuple(d for d in out_dims if d in present)
            out = torch.einsum(
                f"{spec}->{''.join(letters[d] for d in kept)}", *[t for t, _ in parts]
            )
            missing = math.prod(self.sizes[d] for d in reduced if d not in present)
            out = out * missing if missing != 1 else out
            return align(out, kept, out_dims)

        logits = self.logits
        if self.mask is not None and not reduced.intersection(self.mask.dims):
            # a mask constant along the summed plates (a padded time step) factors out of the
            # sum: apply it to the small result, not to the data
            linear = einsum([(self.value.tensor, self.value.dims), (logits.tensor, logits.dims)])
            normaliser = einsum([(F.softplus(logits.tensor), logits.dims)])
            mask = align(self.mask.tensor.to(logits.tensor.dtype), self.mask.dims, out_dims)
            return ((linear - normaliser) * mask).expand(tuple(self.sizes[d] for d in out_dims))
        # Fold the mask into the data first: every einsum then has two operands, and torch
        # skips its (costly, per call) contraction-path search.
        weighted, weighted_dims = self.value.tensor, self.value.dims
        if self.mask is not None:
            weighted_dims = tuple(dict.fromkeys(self.value.dims + self.mask.dims))
            weighted = align(weighted, self.value.dims, weighted_dims) * align(
                self.mask.tensor, self.mask.dims, weighted_dims
            )
        linear = einsum([(weighted, weighted_dims), (self.logits.tensor, self.logits.dims)])
        normaliser = [(F.softplus(self.logits.tensor), self.logits.dims)]
        if self.mask is not None:
            normaliser.append((self.mask.tensor.to(self.logits.tensor.dtype), self.mask.dims))
        normaliser = einsum(normaliser)
        return (linear - normaliser).expand(tuple(self.sizes[d] for d in out_dims))

    def signature(self, plates):
        """Lazy factors with equal signatures can be stacked and reduced in one einsum.

        Variables are anonymous here (``x_3`` and ``x_4`` play the same part in two steps of a
        chain); plates, shapes and the layout of the parts must agree.
        """
        return (
            self.is_logits,
            *tuple(
                None
                if p is None
                else (tuple(d if d in plates else "*" for d in p.dims), tuple(p.tensor.shape))
                for p in (self.param, self.value, self.mask)
            ),
        )


class CategoricalTable:
    """``log p(x = k | params)`` of an enumerated Categorical site, for every ``k`` at once.

    At its own enumerated support a Categorical's log-prob is its normalised logits with the
    event dim renamed to the variable: no gather is needed. The table keeps the *parameter* it
    comes from (normalised probs or logits), so a chain of transition sites stacks its
    parameters first and takes a single ``log`` (see :func:`log_tables`), instead of one
    ``clamp``, ``log`` and ``gather`` per time step, each with its own backward node.
    """

    def __init__(
        self,
        param: torch.Tensor,
        dims: tuple[str, ...],
        is_logits: bool,
        mask: Factor | None = None,
    ):
        self.param, self.param_dims, self.is_logits, self.mask = param, dims, is_logits, mask
        self.sizes = dict(zip(dims, param.shape))
        if mask is not None:  # infer_discrete masks enumerated sites: zero where masked out
            self.sizes.update(mask.sizes)
        self.dims = tuple(self.sizes)

    def element_size(self) -> int:
        return self.param.element_size()

    @property
    def data(self):
        return self

    @property
    def log_table(self) -> torch.Tensor:
        """The unmasked table over ``param_dims``."""
        return self.param if self.is_logits else probs_to_logits(self.param)

    @property
    def tensor(self) -> torch.Tensor:
        if self.mask is None:
            return self.log_table
        table = align(self.log_table, self.param_dims, self.dims)
        mask = align(self.mask.tensor, self.mask.dims, self.dims)
        return torch.where(mask, table, table.new_zeros(())).expand(
            tuple(self.sizes[d] for d in self.dims)
        )


def log_tables(tables, dims) -> torch.Tensor:
    """``torch.stack([t.tensor aligned to dims for t in tables])`` with one ``log`` for all."""
    params = torch.stack([align(t.param, t.param_dims, dims) for t in tables])
    return params if tables[0].is_logits else probs_to_logits(params)


STACK = "__stack__"


def stack(factors):
    """Stack lazy factors of one signature along a new leading dim named :data:`STACK`."""
    first = factors[0]

    def stacked(part):
        if getattr(first, part) is None:
            return None
        dims = (STACK, *getattr(first, part).dims)
        return Factor(torch.stack([getattr(f, part).tensor for f in factors]), dims)

    return type(first)(stacked("param"), stacked("value"), stacked("mask"), first.is_logits)
