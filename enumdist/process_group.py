"""Every ``torch.distributed`` process group the project starts: one way to start it, stop it
and time it out.

Two things go wrong with spawned gloo ranks, and both are fixed here, once:

- **SIGABRT at interpreter exit** ("terminate called without an active exception"). Importing
  ``torch._dynamo`` *after* ``init_process_group`` (the first optimiser step does) leaves gloo's
  worker threads alive past ``destroy_process_group()``; one frees a tensor after Python began
  finalising. Importing it *before* the group exists avoids the race: this module imports it
  at import time, and :func:`init_process_group` is the only way the project starts a group
  (decode, the tests' workers, Lightning's DDP through :mod:`enumdist.pipeline.module`, which
  imports this module, so spawned Lightning workers import it on unpickling, before init).
- **A stopped or stuck rank blocks the others** (Lightning's default: 30 minutes).
  :data:`DEFAULT_TIMEOUT_S` bounds every collective (joining the group may take longer: ranks
  start seconds apart on a busy machine); :mod:`enumdist.pipeline.strategies` gives Lightning's
  DDP strategies the configured timeout (``trainer.process_group_timeout_s``) and
  :func:`naming_timeouts` turns the backend's bare "Timed out" into an error naming the
  timeout, its config key and the ranks waited for.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import torch
import torch._dynamo  # before any init_process_group: see the module docstring
import torch.distributed as dist

from enumdist.rank_zero import global_rank

DEFAULT_TIMEOUT_S = 300.0
RENDEZVOUS_MIN_S = 300.0
TIMEOUT_KEY = "trainer.process_group_timeout_s"
_TIMED_OUT = re.compile(r"timed? ?out|timeout", re.IGNORECASE)


class ProcessGroupTimeout(RuntimeError):
    """A collective waited longer than the process-group timeout: another rank is stopped or stuck."""


def default_backend() -> str:
    return "nccl" if torch.cuda.is_available() else "gloo"


def rendezvous_timeout_s(timeout_s: float) -> float:
    """Joining waits at least :data:`RENDEZVOUS_MIN_S`: ranks start seconds apart on a busy machine,
    and a short collective timeout must not make start-up fail."""
    return max(float(timeout_s), RENDEZVOUS_MIN_S)


def set_collective_timeout(timeout_s: float) -> None:
    """Bound every later collective of the default group by ``timeout_s``."""
    dist.distributed_c10d._set_pg_timeout(timedelta(seconds=float(timeout_s)))


def init_process_group(
    backend: str | None = None, *, timeout_s: float = DEFAULT_TIMEOUT_S, **kwargs
) -> None:
    """``torch.distributed.init_process_group`` the project's way (see module docstring): joining
    waits :func:`rendezvous_timeout_s`, every collective afterwards ``timeout_s``."""
    dist.init_process_group(
        backend or default_backend(),
        timeout=timedelta(seconds=rendezvous_timeout_s(timeout_s)),
        **kwargs,
    )
    set_collective_timeout(timeout_s)


@contextmanager
def process_group(
    backend: str | None = None, *, timeout_s: float = DEFAULT_TIMEOUT_S, **kwargs
) -> Iterator[None]:
    """A process group for the duration of the block, destroyed on the way out (errors included)."""
    init_process_group(backend, timeout_s=timeout_s, **kwargs)
    try:
        yield
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    """A free TCP port on localhost for ``MASTER_PORT``."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def is_timeout(error: BaseException) -> bool:
    """A backend's (or a spawned worker's re-raised) collective timeout."""
    return isinstance(error, RuntimeError) and bool(_TIMED_OUT.search(str(error)))


def without_timeout(trainer_cfg: Any) -> tuple[Any, float | None]:
    """``(trainer config without process_group_timeout_s, its value)``: Lightning's ``Trainer``
    does not take the key; :func:`lightning_strategy` does."""
    from omegaconf import open_dict

    trainer_cfg = trainer_cfg.copy()
    with open_dict(trainer_cfg):
        timeout_s = trainer_cfg.pop("process_group_timeout_s", None)
    return trainer_cfg, timeout_s


@contextmanager
def naming_timeouts(
    timeout_s: float | None, rank: int, world_size: int, key: str = TIMEOUT_KEY, on_timeout=None
) -> Iterator[None]:
    """Re-raise a collective's timeout as :class:`ProcessGroupTimeout` naming ``key``, its value,
    this rank and the ranks it waited for; ``on_timeout()`` runs first (e.g. to kill the ranks
    this process launched)."""
    try:
        yield
    except Exception as error:
        if world_size <= 1 or not is_timeout(error):
            raise
        others = [r for r in range(world_size) if r != rank]
        waited = f"rank {others[0]}" if len(others) == 1 else f"one of ranks {others}"
        timeout = ProcessGroupTimeout(
            f"rank {rank} of {world_size}: a collective waited longer than {key}={timeout_s:g} s for "
            f"{waited}, which is stopped (SIGSTOP), stuck or dead. Find that rank's process; raise "
            f"{key} if its steps are legitimately that slow. Backend said: "
            f"{str(error).strip().splitlines()[-1][:300]}"
        )
        # said at once, on stderr: the teardown that follows (killing the launched ranks,
        # Lightning's and Hydra's handlers) must not be able to lose the reason
        print(f"{type(timeout).__name__}: {timeout}", file=sys.stderr, flush=True)
        if on_timeout is not None:
            on_timeout()
        raise timeout from error


def rank_and_world() -> tuple[int, int]:
    """This process's (rank, world size): from the group when it exists, else from the environment
    (the rank as :func:`enumdist.rank_zero.global_rank` reads it)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return global_rank(), int(os.environ.get("WORLD_SIZE", "1"))
