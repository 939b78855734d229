"""Early, explicit checks of a composed config: each error names the config key and the fix."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig


class ConfigError(ValueError):
    """A config value that cannot work; the message names the key."""


def instantiate_group(cfg: DictConfig, key: str, **kwargs) -> Any:
    """``hydra.utils.instantiate(cfg[key])`` with an error that names ``key`` and its ``_target_``."""
    node = cfg.get(key)
    if node is None or "_target_" not in node:
        raise ConfigError(f"{key}: no config with a _target_ (choose one of enumdist/conf/{key}/*.yaml)")
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as error:
        raise ConfigError(f"{key}: cannot instantiate {key}._target_={node._target_!r}: {error}") from error


def slurm_tasks_per_node(environ: dict[str, str] | None = None) -> int | None:
    """Tasks per node of the SLURM job step we run in, or ``None`` outside ``srun``/SLURM tasks."""
    environ = os.environ if environ is None else environ
    if "SLURM_NTASKS" not in environ or environ.get("SLURM_JOB_NAME") in ("bash", "interactive"):
        return None
    per_node = environ.get("SLURM_NTASKS_PER_NODE") or environ.get("SLURM_TASKS_PER_NODE")
    if per_node:
        return int(per_node.split("(")[0].split(",")[0])  # "2(x3)" -> 2
    return int(environ["SLURM_NTASKS"]) // int(environ.get("SLURM_NNODES", environ.get("SLURM_JOB_NUM_NODES", "1")))


def check_slurm_devices(cfg: DictConfig, environ: dict[str, str] | None = None) -> None:
    """Lightning needs one SLURM task per device; say so before Lightning fails obscurely."""
    per_node = slurm_tasks_per_node(environ)
    if per_node is not None and per_node != int(cfg.trainer.devices):
        raise ConfigError(
            f"trainer.devices={cfg.trainer.devices} but this SLURM job runs {per_node} task(s) per node: "
            f"set trainer.devices={per_node} or submit with --ntasks-per-node={cfg.trainer.devices}"
        )


def check_decoding(cfg: DictConfig) -> None:
    if cfg.get("decode", {}).get("enabled", False):
        try:
            from enumdist.decoding import run_decoding  # noqa: F401
        except ImportError as error:
            raise ConfigError(
                "decode.enabled=true but enumdist.decoding.run_decoding is not available "
                f"({error}); run with decode.enabled=false"
            ) from error


def resolve_ckpt_path(ckpt_path: str | None, run_dir: str | os.PathLike) -> str | None:
    """``"last"``: the checkpoint with the highest recorded step among ``<run_dir>/checkpoints/*.ckpt``
    and SLURM's ``<run_dir>/hpc_ckpt_*.ckpt`` whose bytes verify (corrupt ones are skipped with a
    warning; see :mod:`enumdist.pipeline.checkpoint_files`), or ``None`` (fresh start) when there is
    none. A given path must exist and verify."""
    from enumdist.pipeline.checkpoint_files import newest_intact, read_record, verify

    if ckpt_path is None:
        return None
    if ckpt_path == "last":
        found = newest_intact(run_dir, Path(run_dir) / "checkpoints")
        legacy = Path(run_dir) / "checkpoints" / "last.ckpt"
        if found is None and legacy.is_file() and read_record(legacy) is None:
            # a run from before checksums: loaded weights-only, unverified (with a warning)
            found = legacy
        if found is not None:
            print(f"ckpt_path=last: resuming from {found}", flush=True)
        return None if found is None else str(found)
    if not Path(ckpt_path).is_file():
        raise ConfigError(f"ckpt_path={ckpt_path!r} does not exist (use ckpt_path=last to resume a run directory)")
    verify(ckpt_path)
    return str(ckpt_path)
