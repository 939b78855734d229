"""Only rank 0 speaks: the project's one logger, and the one place that says which rank this is.

Every message the pipeline, the decoding stage and the entry points show a user goes through
``log = get_logger(__name__)`` and ``log.info(...)`` (``log``, not ``logger``: in the pipeline a
"logger" is an experiment tracker such as wandb). The ``enumdist`` logger writes plain
lines (the message alone, no level or time) to the *current* ``sys.stdout``, flushed per line, so
what a user sees is what ``print`` showed; but it does so on global rank 0 only, so a run on N
ranks prints each line once, not N times.

:func:`global_rank` is the process group's rank when one exists, else what the launcher put in
the environment: ``RANK`` (torchrun), ``LOCAL_RANK`` (Lightning's DDP launcher), ``SLURM_PROCID``
(srun), ``JSM_NAMESPACE_RANK`` (jsrun) -- the variables, and the order, of Lightning's
``rank_zero_only``, which decides the same question for Lightning's own messages.

Messages do not propagate to the root logger: Hydra's job logging would otherwise print each one
a second time with its ``[time][name][level]`` prefix.
"""

from __future__ import annotations

import logging
import os
import sys

#: where launchers put the global rank, in the order Lightning's ``rank_zero_only`` reads them
RANK_VARIABLES = ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK")
ROOT = "enumdist"


def global_rank() -> int:
    """This process's global rank (0 for a single process); see the module docstring."""
    distributed = sys.modules.get("torch.distributed")  # not imported: no group can exist
    if distributed is not None and distributed.is_available() and distributed.is_initialized():
        return distributed.get_rank()
    for name in RANK_VARIABLES:
        if os.environ.get(name, "").strip():
            return int(os.environ[name])
    return 0


def is_rank_zero() -> bool:
    return global_rank() == 0


class _RankZeroFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return is_rank_zero()  # asked per message: a process group may start after import


class _CurrentStdout(logging.StreamHandler):
    """A stream handler on whatever ``sys.stdout`` is *now* (pytest's capture replaces it)."""

    def __init__(self):
        super().__init__()
        self.setFormatter(logging.Formatter("%(message)s"))
        self.addFilter(_RankZeroFilter())

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, value):  # logging.StreamHandler.__init__ sets it; the property wins
        pass


def _configure_root() -> logging.Logger:
    root = logging.getLogger(ROOT)
    if not any(isinstance(h, _CurrentStdout) for h in root.handlers):
        root.addHandler(_CurrentStdout())
    root.setLevel(logging.INFO)
    root.propagate = False
    return root


_configure_root()


def get_logger(name: str) -> logging.Logger:
    """The rank-zero logger for module ``name`` (``__name__``). A module run as a script
    (``__main__``) gets ``enumdist.__main__``, under the same handler."""
    return logging.getLogger(
        name if name == ROOT or name.startswith(ROOT + ".") else f"{ROOT}.{name}"
    )
