"""Lightning's DDP strategies with the process-group timeout of the trainer config.

``trainer.process_group_timeout_s`` bounds every collective after the group is up (Lightning's
default is 30 minutes, so one stopped rank blocks the others that long); joining the group waits
longer (:func:`enumdist.process_group.rendezvous_timeout_s`). A module-level class, so that
``ddp_spawn`` can pickle it.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from pytorch_lightning.strategies import DDPStrategy, StrategyRegistry

from enumdist.process_group import rendezvous_timeout_s, set_collective_timeout


class TimedDDPStrategy(DDPStrategy):
    """``DDPStrategy`` whose collectives time out after ``collective_timeout_s``."""

    def __init__(self, *args, collective_timeout_s: float, **kwargs):
        kwargs["timeout"] = timedelta(seconds=rendezvous_timeout_s(collective_timeout_s))
        super().__init__(*args, **kwargs)
        self.collective_timeout_s = float(collective_timeout_s)

    def setup_distributed(self) -> None:
        super().setup_distributed()
        set_collective_timeout(self.collective_timeout_s)


def lightning_strategy(strategy: Any, timeout_s: float | None) -> Any:
    """A registered DDP strategy name (``"ddp"``, ``"ddp_spawn"``, ...) as a
    :class:`TimedDDPStrategy` with that entry's settings; anything else (``"auto"``, an
    instance, no timeout) unchanged."""
    if timeout_s is None or not isinstance(strategy, str) or strategy not in StrategyRegistry:
        return strategy
    entry = StrategyRegistry[strategy]
    if entry["strategy"] is not DDPStrategy:
        return strategy
    return TimedDDPStrategy(**entry["init_params"], collective_timeout_s=timeout_s)


def kill_launched_ranks(trainer) -> None:
    """SIGKILL the rank processes this process launched (``strategy=ddp`` re-executes the command
    for ranks 1..n-1 as its children): after a timeout one of them is stopped or stuck, and left
    alone it would outlive the run (a stopped process holds the terminal's pipes open)."""
    import signal

    from pytorch_lightning.strategies.launchers.subprocess_script import (
        _SubprocessScriptLauncher,
    )

    launcher = getattr(trainer.strategy, "launcher", None)
    if isinstance(launcher, _SubprocessScriptLauncher):
        launcher.kill(signal.SIGKILL)
