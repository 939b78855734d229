"""enumdist: exact, fast and sharded enumeration for Pyro models with discrete latent variables.

The public API is deliberately tiny:

- :class:`EnumELBO` -- a drop-in for ``pyro.infer.TraceEnum_ELBO`` (optionally sharded over ranks);
- :func:`infer_discrete` -- a drop-in for ``pyro.infer.infer_discrete`` (MAP or posterior samples).
"""

from enumdist.engine.elbo import EnumELBO
from enumdist.engine.discrete import infer_discrete

__all__ = ["EnumELBO", "infer_discrete"]
