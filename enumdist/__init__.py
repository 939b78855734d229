"""enumdist: exact, fast and sharded enumeration for Pyro models with discrete latent variables.

The public API is deliberately tiny:

- :class:`EnumELBO` -- a drop-in for ``pyro.infer.TraceEnum_ELBO`` (optionally sharded over ranks);
- :func:`infer_discrete` -- a drop-in for ``pyro.infer.infer_discrete`` (MAP or posterior samples);
- :class:`DiscreteHMM` -- a drop-in for ``pyro.distributions.DiscreteHMM`` (faster; ragged
  lengths, Viterbi and posterior samples).

Both are imported lazily so that ``import enumdist.data`` stays light.
"""

__all__ = ["DiscreteHMM", "EnumELBO", "infer_discrete"]


def __getattr__(name):
    if name == "EnumELBO":
        from enumdist.engine.elbo import EnumELBO

        return EnumELBO
    if name == "infer_discrete":
        from enumdist.engine.discrete import infer_discrete

        return infer_discrete
    if name == "DiscreteHMM":
        from enumdist.distributions.hmm import DiscreteHMM

        return DiscreteHMM
    raise AttributeError(f"module 'enumdist' has no attribute {name!r}")
