"""Checkpoint files you can trust: written atomically with a checksum, read weights-only and
verified, chosen by step.

Every checkpoint ``<name>.ckpt`` the pipeline writes gets a sidecar ``<name>.ckpt.sha256`` (JSON:
``sha256``, ``bytes``, ``global_step``, ``epoch``), written after the checkpoint is in place. The
sidecars are the run's manifest of checkpoints:

- :func:`load_checkpoint` (training resume through :class:`AtomicCheckpointIO`, and decoding)
  refuses a file whose bytes do not match its sidecar, naming it, and loads with an explicit
  ``weights_only=True`` (so ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` cannot turn it off). A truncated,
  empty or garbage file is a :class:`CheckpointError` naming the file, never a raw pickle error.
- :func:`newest_intact` picks ``ckpt_path=last`` by the recorded step, not by mtime, skips corrupt
  files (saying so), and ignores files no sidecar vouches for (a planted ``hpc_ckpt_9.ckpt``).
- :func:`tidy_checkpoints` removes what a kill leaves behind: ``atomic_write`` temporaries and
  ``step*.ckpt`` files beyond ``save_top_k``.

A kill between the rename of a checkpoint and the write of its sidecar leaves a stale sidecar:
that file then reads as corrupt and resume falls back to the previous intact one.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from lightning_fabric.plugins import TorchCheckpointIO

from enumdist.atomic import TEMPORARY_GLOB, atomic_write, file_sha256
from enumdist.engine.errors import EnumdistError
from enumdist.rank_zero import get_logger

log = get_logger(__name__)

SIDECAR_SUFFIX = ".sha256"
# SLURM requeue checkpoints: <run_dir>/requeue/requeue-<step>.ckpt. Never ``hpc_ckpt_*`` in the
# trainer's root dir: under SLURM, Lightning's ``ckpt_path=None`` resumes from the highest number
# it finds in any name there containing ``hpc_ckpt_`` (it read ``hpc_ckpt_1.ckpt.sha256`` as 1256)
REQUEUE_DIR = "requeue"


def requeue_checkpoint(run_dir: str | os.PathLike, step: int) -> Path:
    """Where the SLURM requeue checkpoint of ``step`` goes (``ckpt_path=last`` finds it)."""
    return Path(run_dir) / REQUEUE_DIR / f"requeue-{step}.ckpt"


class CheckpointError(EnumdistError, ValueError):
    """A checkpoint file that cannot be used (corrupt, truncated, not a checkpoint); names the file."""


def sidecar_of(path: str | os.PathLike) -> Path:
    return Path(str(path) + SIDECAR_SUFFIX)


def save_checkpoint(checkpoint: dict[str, Any], path: str | os.PathLike) -> None:
    """``torch.save`` atomically, then the sidecar that records its checksum and step."""
    sha256 = atomic_write(path, lambda f: torch.save(checkpoint, f), checksum=True)
    record = {
        "sha256": sha256,
        "bytes": os.path.getsize(path),
        "global_step": int(checkpoint.get("global_step", -1)),
        "epoch": int(checkpoint.get("epoch", -1)),
    }
    atomic_write(sidecar_of(path), lambda f: f.write(json.dumps(record).encode()))


def read_record(path: str | os.PathLike) -> dict[str, Any] | None:
    """The sidecar's record of ``path``, or ``None`` when it has none (or an unreadable one)."""
    try:
        record = json.loads(sidecar_of(path).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and "sha256" in record else None


def verify(path: str | os.PathLike) -> dict[str, Any] | None:
    """Raise :class:`CheckpointError` unless ``path``'s bytes match its sidecar; -> the record,
    or ``None`` for a file without a sidecar (not written by this pipeline: unverifiable)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    record = read_record(path)
    if record is None:
        return None
    size = path.stat().st_size
    if size != record.get("bytes", size) or file_sha256(path) != record["sha256"]:
        raise CheckpointError(
            f"checkpoint {path} is corrupt: its sha256 does not match {sidecar_of(path).name} "
            f"({size} bytes, {record.get('bytes')} recorded at step {record.get('global_step')}). "
            "Resume with ckpt_path=last (it falls back to the newest intact checkpoint) or pass "
            "another checkpoint"
        )
    return record


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """Verify ``path`` against its sidecar, then ``torch.load(weights_only=True)`` it."""
    if verify(path) is None:
        warnings.warn(
            f"checkpoint {path} has no {SIDECAR_SUFFIX} sidecar: its bytes cannot be verified "
            "(loading it weights-only)",
            stacklevel=2,
        )
    if Path(path).stat().st_size == 0:
        raise CheckpointError(
            f"checkpoint {path} is empty (0 bytes): a write was cut short; "
            "resume with ckpt_path=last or pass another checkpoint"
        )
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # truncated zip, garbage, or a pickle asking for arbitrary objects
        raise CheckpointError(
            f"checkpoint {path} is not a readable weights-only checkpoint "
            f"({type(error).__name__}: {str(error).splitlines()[0][:300]})"
        ) from error
    if not isinstance(checkpoint, dict):
        raise CheckpointError(
            f"checkpoint {path} holds a {type(checkpoint).__name__}, not a checkpoint dict"
        )
    return checkpoint


def remove_checkpoint(path: str | os.PathLike) -> None:
    Path(path).unlink(missing_ok=True)
    sidecar_of(path).unlink(missing_ok=True)


def recorded_checkpoints(*folders: str | os.PathLike) -> list[tuple[int, Path]]:
    """``(global_step, path)`` of every ``*.ckpt`` in ``folders`` that has a sidecar, newest step
    first (``last.ckpt`` before a ``step*.ckpt`` of the same step)."""
    found = []
    for folder in folders:
        for path in sorted(Path(folder).glob("*.ckpt")):
            record = read_record(path)
            if record is not None:
                found.append((int(record.get("global_step", -1)), path.name == "last.ckpt", path))
    return [
        (step, path) for step, _, path in sorted(found, key=lambda t: (t[0], t[1]), reverse=True)
    ]


def unrecorded_checkpoints(*folders: str | os.PathLike) -> list[Path]:
    return [
        p
        for folder in folders
        for p in sorted(Path(folder).glob("*.ckpt"))
        if read_record(p) is None
    ]


def newest_intact(*folders: str | os.PathLike) -> Path | None:
    """The recorded checkpoint with the highest step whose bytes verify; warns about every
    corrupt one skipped and every ``*.ckpt`` no sidecar vouches for (ignored)."""
    for path in unrecorded_checkpoints(*folders):
        warnings.warn(
            f"ckpt_path=last: ignoring {path}: it has no {SIDECAR_SUFFIX} sidecar, so this "
            "run did not write it (pass ckpt_path=<path> to use it anyway)",
            stacklevel=2,
        )
    for step, path in recorded_checkpoints(*folders):
        try:
            verify(path)
        except CheckpointError as error:
            warnings.warn(
                f"ckpt_path=last: skipping {path} (step {step}), falling back to an older "
                f"checkpoint: {error}",
                stacklevel=2,
            )
            continue
        return path
    return None


def tidy_checkpoints(
    folder: str | os.PathLike,
    save_top_k: int,
    *,
    keep: tuple[Path, ...] = (),
    extra_folders: tuple[str | os.PathLike, ...] = (),
) -> list[Path]:
    """Remove what a killed run leaves behind; -> the removed paths.

    - ``atomic_write`` temporaries (``.<name>.*.tmp``) in ``folder`` and ``extra_folders``;
    - recorded ``*.ckpt`` files in ``folder`` (never ``last.ckpt`` nor ``keep``) beyond the ``save_top_k`` newest
      by step (``ModelCheckpoint`` with ``monitor=None`` keeps exactly those; a kill between its
      save of the new file and its removal of the old one leaves an orphan). ``save_top_k < 0``
      keeps all.
    """
    removed = [
        p for f in (folder, *extra_folders) for p in Path(f).glob(TEMPORARY_GLOB) if p.is_file()
    ]
    if save_top_k >= 0:
        ranked = [p for _, p in recorded_checkpoints(folder) if p.name != "last.ckpt"]
        kept = {Path(p).resolve() for p in keep}
        removed += [p for p in ranked[save_top_k:] if p.resolve() not in kept]
    for path in removed:
        remove_checkpoint(path) if path.suffix == ".ckpt" else path.unlink(missing_ok=True)
    return removed


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint I/O, through this module: atomic writes with a checksum sidecar,
    verified weights-only reads (every path Lightning resumes by, SLURM's ``hpc`` one included).

    Lightning's own writer goes through ``fsspec``'s transaction, which writes to
    ``tempfile.mkstemp()`` (``/tmp``) and then ``shutil.move``s: a copy, not an atomic rename,
    whenever ``/tmp`` is another filesystem than the run directory.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        save_checkpoint(checkpoint, path)

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict[str, Any]:
        # Lightning's default keeps every storage where it was saved; weights_only is always True
        return load_checkpoint(path, map_location=map_location or (lambda storage, loc: storage))

    def remove_checkpoint(self, path) -> None:
        remove_checkpoint(path)


def tidy_run_dir(
    run_dir: str | os.PathLike, model_checkpoint: Any | None, resume_from: str | os.PathLike
) -> list[Path]:
    """:func:`tidy_checkpoints` for a run directory before a run resumes from ``resume_from``
    (which is kept whatever its rank); prints what it removed. ``model_checkpoint`` is the ``callbacks.model_checkpoint`` config (``None``: no such
    callback, only temporaries are removed; with a ``monitor`` the kept set is not by step, so
    only temporaries are removed too)."""
    run_dir = Path(run_dir)
    top_k = -1
    if model_checkpoint is not None and model_checkpoint.get("monitor") is None:
        top_k = int(model_checkpoint.get("save_top_k", 1))
    folder = (
        Path(model_checkpoint.get("dirpath", run_dir / "checkpoints"))
        if model_checkpoint
        else run_dir / "checkpoints"
    )
    removed = tidy_checkpoints(
        folder, top_k, keep=(Path(resume_from),), extra_folders=(run_dir, run_dir / REQUEUE_DIR)
    )
    for path in removed:
        log.info(f"resume: removed {path}, left behind by an interrupted run")
    return removed


def resolve_ckpt_path(ckpt_path: str | None, run_dir: str | os.PathLike) -> str | None:
    """``"last"``: the checkpoint with the highest recorded step among
    ``<run_dir>/checkpoints/*.ckpt``, the SLURM requeue checkpoints ``<run_dir>/requeue/*.ckpt`` (and ``<run_dir>/hpc_ckpt_*.ckpt``
    of runs requeued by older versions) whose bytes verify (corrupt ones are skipped with a
    warning; see :mod:`enumdist.pipeline.checkpoint_files`), or ``None`` (fresh start) when there is
    none. A given path must exist and verify."""
    from enumdist.pipeline.checks import ConfigError  # checks re-exports this function

    if ckpt_path is None:
        return None
    if ckpt_path == "last":
        found = newest_intact(run_dir, Path(run_dir) / "checkpoints", Path(run_dir) / REQUEUE_DIR)
        legacy = Path(run_dir) / "checkpoints" / "last.ckpt"
        if found is None and legacy.is_file() and read_record(legacy) is None:
            # a run from before checksums: loaded weights-only, unverified (with a warning)
            found = legacy
        if found is not None:
            log.info(f"ckpt_path=last: resuming from {found}")
        return None if found is None else str(found)
    if not Path(ckpt_path).is_file():
        raise ConfigError(
            f"ckpt_path={ckpt_path!r} does not exist (use ckpt_path=last to resume a run directory)"
        )
    verify(ckpt_path)
    return str(ckpt_path)
