"""enumdist: exact, fast and sharded enumeration for Pyro models with discrete latent variables.

The public API is deliberately tiny:

- :class:`EnumELBO` -- a drop-in for ``pyro.infer.TraceEnum_ELBO`` (optionally sharded over ranks);
- :func:`infer_discrete` -- a drop-in for ``pyro.infer.infer_discrete`` (MAP or posterior samples);
- :class:`JitEnumELBO` -- the name for users of ``JitTraceEnum_ELBO``: ``EnumELBO``, which needs
  no JIT (it compiles nothing; see its docstring);
- :class:`DiscreteHMM` -- a drop-in for ``pyro.distributions.DiscreteHMM`` (faster; ragged
  lengths, Viterbi and posterior samples).

All are imported lazily so that ``import enumdist.data`` stays light.
"""

__all__ = ["DiscreteHMM", "EnumELBO", "JitEnumELBO", "infer_discrete"]


def __getattr__(name):
    if name in ("EnumELBO", "JitEnumELBO"):
        from enumdist.engine import elbo

        return getattr(elbo, name)
    if name == "infer_discrete":
        from enumdist.engine.discrete import infer_discrete

        return infer_discrete
    if name == "DiscreteHMM":
        from enumdist.distributions.hmm import DiscreteHMM

        return DiscreteHMM
    raise AttributeError(f"module 'enumdist' has no attribute {name!r}")
