"""Fast chain path: exact inference for a hidden Markov chain whose time is a tensor dimension.

The generic engine eliminates a python-loop chain one traced site at a time. When the model is
known to be a first-order chain, the same numbers come out of a fused forward algorithm over
``emission_log_probs[N, T, S]`` at a small fraction of the cost:

* :func:`chain_log_likelihood` -- ``log p(y_n)`` per sequence, with its *own* adjoint (a
  forward-backward pass in :class:`_ChainLogZ`) instead of autograd through every step. Two
  ways to compute the messages: ``method="sequential"`` (one vector-matrix product per step)
  and ``method="scan"`` (blocked scan: ``K`` batched steps build all ``T/K`` block matrices,
  ``O(K + T/K)`` python steps instead of ``T``, for long chains). Both keep ``O(N·T·S)`` memory.
* :func:`chain_map` -- Viterbi states (equal to Pyro's ``infer_discrete(temperature=0)``).
* :func:`chain_sample` -- one exact joint posterior draw (forward filtering, backward sampling).
* :func:`bernoulli_emission_log_probs` -- all steps' emission log-probs in one matmul.
* :func:`chain_factor` -- the Pyro-facing door: ``pyro.factor`` of the chain marginal.

Modules: ``scaling`` (scaled probability space), ``sequential`` and ``scan`` (the two message
back ends), ``forward_backward`` (``log Z`` and its adjoint), ``viterbi`` (the one Viterbi),
``sampling`` (the one forward-filter-backward-sample), ``factor`` (the Pyro door) and
``adapter`` (plan chain steps -> kernels, used by ``contract``).

Conventions (all functions). ``S`` states, ``N`` sequences, ``T`` steps.

* ``init_logits [S]``: log-weight of ``x_0``.
* ``trans_logits [S, S]`` (homogeneous) or ``[T, S, S]``: ``trans_logits[t][i, j]`` is the
  log-weight of ``x_{t-1}=i -> x_t=j``; ``trans_logits[0]`` is unused (gets zero gradient).
* ``emission_log_probs [N, T, S]``: ``log p(y_{n,t} | x_t = s)``.
* ``lengths [N]`` (long, ``1 <= lengths <= T``, default all ``T``): steps ``t >= lengths[n]``
  are ignored entirely. For normalised transitions this equals Pyro's python-loop chain with the
  emissions masked (``poutine.mask`` leaves enumerated sites unmasked there, and a padded
  step's state then sums to one).

Weights need not be normalised: the result is the log of the sum over all paths. Numerics are
scaled probability space: every message (and every row of a scan block matrix) is normalised to
sum one after each product and its log-norm kept; states unreachable from every state of
non-negligible weight underflow to ``-inf`` as in any scaled forward algorithm.
"""

# ruff: noqa: F401 - the underscored names below are re-exports (see the note after them)
from enumdist.engine.chain.factor import bernoulli_emission_log_probs, chain_factor
from enumdist.engine.chain.forward_backward import (
    METHODS,
    _ChainLogZ,
    _prepare,
    _sorted,
    auto_method,
    batched_chain_log_likelihood,
    chain_log_likelihood,
)
from enumdist.engine.chain.sampling import backward_sample, batched_chain_sample, chain_sample, draw
from enumdist.engine.chain.scaling import (
    _finite_max,
    _normalised,
    _row_max,
    _scaled,
    _transition_probs,
)
from enumdist.engine.chain.scan import (
    _block_matrices,
    _blocked_steps,
    _scan_backward,
    _scan_forward,
    _Steps,
)
from enumdist.engine.chain.sequential import _sequential_backward, _sequential_forward
from enumdist.engine.chain.viterbi import chain_map, follow, viterbi

# The underscored names are re-exported for the kernels' tests and for time sharding, which
# builds on the blocked scan's pieces.
__all__ = [
    "METHODS",
    "auto_method",
    "backward_sample",
    "batched_chain_log_likelihood",
    "batched_chain_sample",
    "bernoulli_emission_log_probs",
    "chain_factor",
    "chain_log_likelihood",
    "chain_map",
    "chain_sample",
    "draw",
    "follow",
    "viterbi",
]
