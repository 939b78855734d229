"""Errors the engine raises; each message names the site, plate or option and the fix.

Every error derives from :class:`EnumdistError`. Where Pyro raises for the same condition, the
engine's error also derives from the built-in class Pyro raises (``ValueError``,
``NotImplementedError``, ...) and its message starts with Pyro's key phrase, so code written
against ``TraceEnum_ELBO``'s exceptions keeps working.
"""


class EnumdistError(Exception):
    """Base of every error enumdist raises on purpose."""


class EnumerationError(EnumdistError, ValueError):
    """A model/guide cannot be enumerated as written (layout, support, scale, data)."""


class SiteShapeError(EnumerationError):
    """A site's batch shape disagrees with its plates (Pyro: "invalid log_prob shape",
    "not broadcastable")."""


class MarkovHistoryError(EnumerationError):
    """A site depends on a variable whose enumeration dim ``pyro.markov`` has recycled (Pyro:
    "Enumeration dim conflict")."""


class ModelGuideMismatchError(EnumerationError):
    """Model and guide disagree on a site (Pyro: "Model and guide shapes disagree", a
    ``pyro.factor`` in the guide without ``has_rsample``)."""


class InvalidArgumentError(EnumerationError):
    """A distribution's parameter or an observation violates its constraint (Pyro: "Expected
    parameter ...", "Expected value argument ... to be within the support")."""


class NonTreePlatesError(EnumerationError, NotImplementedError):
    """Variables in crossing plates with no variable in all of them (Pyro: "Expected
    tree-structured plate nesting", a ``NotImplementedError``)."""


class UnsupportedEnumerationError(EnumdistError, NotImplementedError):
    """A combination of options the engine cannot compute exactly (and refuses to guess)."""


class ModelStructureError(EnumerationError):
    """Ranks of a sharded run disagree on the model's structure (sites, plates, sizes)."""


class MemoryBudgetError(EnumerationError):
    """The elimination would allocate a tensor larger than the memory budget.

    Raised by the plan's preflight, it carries the estimate and the budget (bytes); the
    per-site and Dice preflights raise it without them.
    """

    peak_bytes: int
    memory_budget: int


class ShardError(EnumdistError, RuntimeError):
    """Another rank of a sharded run failed; raised on every rank instead of hanging."""
