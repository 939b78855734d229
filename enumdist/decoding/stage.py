"""The decoding stage: decode a whole split of a trained run into Parquet files and pictures.

Layout under ``<run_dir>/decoded/<split>-temperature<t>/``:

``chunks-<fingerprint>/items-<start>-<stop>.parquet``  one file per rank's shard of one global
    step; it exists complete or not at all (temp file + ``os.replace``), so a rerun skips exactly
    the finished chunks. The fingerprint names the checkpoint file and the options that change
    the output (marginals, seed): a retrained run or other options never reuse stale chunks;
``decoded.parquet``                       all chunks in item order (written last, by rank 0,
    one chunk at a time into row groups of ~8k rows, temp file + fsync + rename);
``manifest.json``                         options, chunk list and outputs (written last).

Items come from :mod:`.items`: a split held in memory, or -- for a
:class:`~enumdist.pipeline.streaming.StreamingDataModule` -- read straight from its Parquet
shards, each rank only its own items of each step; with the chunks on disk and the merge streamed,
memory does not grow with the split (10^6 synthetic sequences: see BENCHMARKS.md ``scale``).
``max_items`` decodes the split's first items only. The steps and their sharing among ranks are
:func:`enumdist.pipeline.batches.plan_decode_steps`, the batches
:func:`~enumdist.pipeline.batches.make_batch`: the layout training uses.

``decoded.parquet`` has one row per item: ``index`` (position in the split; for synthetic shards
the item's global id, shard ``index // shard_size``), ``name`` (the item's own name, e.g. a
chorale's file name; null where the data names none), ``length``, one
list column per hidden state (``x``, ...) and, with ``probabilities`` (default), ``log_joint``
(``log p(z, x)`` of the decoded path), ``log_evidence`` (``log p(x)``) and ``path_posterior``
(``p(z | x)``), see :mod:`.scores`; with ``marginals``, ``<state>_marginals`` (``[length, D]``
per item) and ``<state>_confidence`` (``p(z_t = decoded state | x)`` per position).

Pictures go to the run dir, for the split's first item: ``piano_roll_states.png`` and
``transitions.png`` (chain models), ``marginals.png`` (with ``marginals``). The loss picture is
training's (``train_history.png``).
Under torch.distributed every rank decodes its own shard of each global step with
``infer_discrete(..., shard_plates=[model.shard_plate])`` (a collective call), so all ranks walk
the same steps; which steps remain is decided once, by rank 0, before anyone writes.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pyro
import torch
import torch.distributed as dist
from hydra.utils import instantiate
from tqdm.auto import tqdm

from enumdist.decoding import checkpoint as ckpt
from enumdist.decoding import pictures
from enumdist.decoding.decoder import decode_batch, to_table
from enumdist.decoding.files import write_json, write_parquet, write_parquet_streamed
from enumdist.decoding.held_out import decoding_guide
from enumdist.decoding.items import DecodeItems, decode_items
from enumdist.pipeline.batches import longest_sequence, plan_decode_steps


@dataclasses.dataclass(frozen=True)
class DecodeOptions:
    split: str = "test"
    temperature: int = 0
    marginals: bool = False
    probabilities: bool = True  # per item: log p(z, x), log p(x), p(z | x)
    decode_batch_size: int = 32
    max_items: int | None = None  # decode the split's first max_items items only (null: all)
    checkpoint: str | None = None  # default <run_dir>/checkpoints/last.ckpt
    seed: int = 0  # temperature=1: step s samples under seed + s
    pictures: bool = True
    progress: bool = True
    distributed: bool = True  # False: decode alone even if torch.distributed is initialised

    def __post_init__(self):
        if self.temperature not in (0, 1):
            raise ValueError(
                f"temperature must be 0 (MAP) or 1 (posterior sample), got {self.temperature}"
            )
        if self.decode_batch_size < 1:
            raise ValueError(f"decode_batch_size must be >= 1, got {self.decode_batch_size}")

    @classmethod
    def from_mapping(cls, options: Mapping[str, Any] | None) -> DecodeOptions:
        """Accepts options, a training config (its ``decode`` group is used) or ``None``."""
        if options is None or isinstance(options, DecodeOptions):
            return options or cls()
        options = dict(options)
        if "decode" in options:
            # the training config: the train entry point decodes on rank 0 only, after fit,
            # while the training process group may still be up -- so alone by default
            options = {"distributed": False, **dict(options["decode"] or {})}
        options.pop("enabled", None)
        options.pop("run_dir", None)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ValueError(f"unknown decode option(s) {unknown}; valid: {sorted(known)}")
        return cls(**options)


def distributed_layout(use_distributed: bool = True) -> tuple[int, int]:
    if use_distributed and dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


#: bumped when a chunk's columns change, so that chunks of an older layout are never merged
OUTPUT_FORMAT = 2


def fingerprint(checkpoint: Path, options: DecodeOptions) -> str:
    """Chunks are reused only for the same checkpoint file and the same decoding choices."""
    stat = checkpoint.stat()
    key = (
        OUTPUT_FORMAT,
        str(checkpoint.resolve()),
        stat.st_size,
        stat.st_mtime_ns,
        options.temperature,
        options.marginals,
        options.probabilities,
        options.seed,
    )
    if options.max_items is not None:  # another plan: a step's seed may belong to other items
        key += (options.max_items,)
    return hashlib.sha256(repr(key).encode()).hexdigest()[:12]


def chunk_path(chunk_dir: Path, items: range) -> Path:
    return chunk_dir / f"items-{items.start:07d}-{items.stop:07d}.parquet"


def write_chunk(path: Path, table: pa.Table) -> Path:
    """Write one finished chunk atomically (a seam for crash tests)."""
    return write_parquet(table, path)


def _broadcast(obj, world_size: int):
    if world_size == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


@dataclasses.dataclass(frozen=True)
class TrainedRun:
    """What decoding needs of a training run: its config, checkpoint, model and guide."""

    run_dir: Path
    cfg: Any
    checkpoint: Path
    state_dict: dict
    model: Any
    guide: Any = None  # None: the model has no non-enumerated latents (or not built yet)


def load_trained_run(run_dir: Path, options: DecodeOptions) -> TrainedRun:
    """The run's config, checkpoint and model (its weights from the checkpoint)."""
    cfg = ckpt.load_run_config(run_dir)
    checkpoint = ckpt.find_checkpoint(run_dir, options.checkpoint)
    state_dict = ckpt.load_state_dict(checkpoint)
    return TrainedRun(
        run_dir, cfg, checkpoint, state_dict, ckpt.build_model(cfg, state_dict, checkpoint)
    )


def with_guide(run: TrainedRun, items: DecodeItems, options: DecodeOptions) -> TrainedRun:
    """The guide ``options.split`` is decoded with (:func:`.held_out.decoding_guide`: the trained
    one, or one folded in to a held-out split's items)."""
    guide = decoding_guide(
        run.cfg,
        run.model,
        items.batch,
        items.num_items,
        run.state_dict,
        run.checkpoint,
        options.split,
        options.seed,
    )
    return dataclasses.replace(run, guide=guide)


def pending_steps(steps: list[list[range]], chunk_dir: Path, world_size: int) -> list[int]:
    """Steps with a chunk still missing, decided by rank 0 and broadcast, so that every rank
    walks the same steps (each step is a collective call)."""
    pending = None
    if not dist.is_initialized() or world_size == 1 or dist.get_rank() == 0:
        pending = [
            s
            for s, shards in enumerate(steps)
            if not all(chunk_path(chunk_dir, r).exists() for r in shards)
        ]
    return _broadcast(pending, world_size)


def decode_steps(
    run: TrainedRun,
    items: DecodeItems,
    steps: list[list[range]],
    pending: list[int],
    chunk_dir: Path,
    options: DecodeOptions,
    rank: int,
    world_size: int,
) -> None:
    """Decode this rank's share of every pending step into its chunk file (progress on rank 0)."""
    shard_plates = [run.model.shard_plate] if world_size > 1 else None
    todo = sum(steps[s][-1].stop - steps[s][0].start for s in pending)
    with tqdm(
        total=todo,
        desc=f"decoding {options.split}",
        unit="item",
        disable=rank != 0 or not options.progress,
    ) as bar:
        for step in pending:
            shares = steps[step]
            mine, whole = shares[rank], range(shares[0].start, shares[-1].stop)
            # every rank cuts to the global step's longest item: the same sites on every rank
            batch = items.batch(
                mine, longest_sequence(items.lengths, slice(whole.start, whole.stop))
            )
            pyro.set_rng_seed(options.seed + step)
            decoded = decode_batch(
                run.model,
                run.guide,
                batch,
                temperature=options.temperature,
                marginals=options.marginals,
                probabilities=options.probabilities,
                shard_plates=shard_plates,
                items_in_step=len(whole),
            )
            write_chunk(chunk_path(chunk_dir, mine), to_table(batch, decoded, items.names(mine)))
            bar.update(len(whole))


def output_paths(run: TrainedRun, out_dir: Path, options: DecodeOptions) -> dict[str, Path]:
    outputs = {"decoded": out_dir / "decoded.parquet", "manifest": out_dir / "manifest.json"}
    if options.pictures:
        if run.model.transition_matrices():
            outputs.update(
                transitions=run.run_dir / "transitions.png",
                piano_roll=run.run_dir / "piano_roll_states.png",
            )
        if options.marginals:
            outputs.update(marginals=run.run_dir / "marginals.png")
    return outputs


def merge_chunks(chunks: list[Path], path: Path, head_rows: int) -> pa.Table:
    """All chunks, in order, into ``path`` one chunk at a time (bounded memory, atomic); returns
    the first ``head_rows`` rows (for the pictures)."""
    head: list[pa.Table] = []

    def tables():
        kept = 0
        for chunk in chunks:
            table = pq.read_table(chunk)
            if kept < head_rows:
                head.append(table.slice(0, head_rows - kept))
                kept += head[-1].num_rows
            yield table

    write_parquet_streamed(tables(), path)
    return pa.concat_tables(head)


def write_outputs(
    run: TrainedRun,
    items: DecodeItems,
    steps: list[list[range]],
    chunk_dir: Path,
    outputs: dict[str, Path],
    options: DecodeOptions,
    world_size: int,
) -> None:
    """Rank 0: the merged Parquet file, the pictures, and last the manifest."""
    out_dir = outputs["manifest"].parent
    chunks = [chunk_path(chunk_dir, r) for shares in steps for r in shares]
    head = merge_chunks(chunks, outputs["decoded"], MAX_ITEMS_PICTURED)
    if options.pictures:
        _draw(run.model, items.batch(range(1)), head, outputs, options.split)
    write_json(
        {
            "options": dataclasses.asdict(options),
            "run_dir": str(run.run_dir),
            "checkpoint": str(run.checkpoint),
            "model": run.cfg.model.get("_target_"),
            "num_items": items.num_items,
            "world_size": world_size,
            "chunks": [str(p.relative_to(out_dir)) for p in chunks],
            "outputs": {k: str(v) for k, v in outputs.items()},
        },
        outputs["manifest"],
    )


def run_decoding(
    run_dir: str | Path, options: Mapping[str, Any] | DecodeOptions | None = None
) -> dict[str, Path]:
    """Decode ``options.split`` of the trained run in ``run_dir``; -> ``{output: path}``.

    ``options`` may be :class:`DecodeOptions`, a mapping of its fields, or the training config
    (its ``decode`` group). Every rank returns the paths; only rank 0 writes merged outputs.
    """
    options = DecodeOptions.from_mapping(options)
    run_dir = Path(run_dir)
    rank, world_size = distributed_layout(options.distributed)
    run = load_trained_run(run_dir, options)
    items = decode_items(instantiate(run.cfg.data), options.split, options.max_items)
    items.validate(run.model, f"split {options.split!r}")
    run = with_guide(run, items, options)

    out_dir = run_dir / "decoded" / f"{options.split}-temperature{options.temperature}"
    chunk_dir = out_dir / f"chunks-{fingerprint(run.checkpoint, options)}"
    steps = plan_decode_steps(items.num_items, options.decode_batch_size, world_size)
    pending = pending_steps(steps, chunk_dir, world_size)
    decode_steps(run, items, steps, pending, chunk_dir, options, rank, world_size)
    if world_size > 1:
        dist.barrier()
    outputs = output_paths(run, out_dir, options)
    if rank == 0:
        write_outputs(run, items, steps, chunk_dir, outputs, options, world_size)
    if world_size > 1:
        dist.barrier()
    return outputs


#: the marginals picture of a model with one state per item shows this many items
MAX_ITEMS_PICTURED = 100


def _draw(model, table: dict, merged: pa.Table, outputs: dict, split: str) -> None:
    """The pictures of ``outputs`` (rank 0): the split's first item, or, for states with one
    position per item (a mixture's assignment), the split's first items side by side.
    ``table``: the first item's batch; ``merged``: the first decoded rows."""
    first = merged.slice(0, 1).to_pylist()[0]
    title = (
        f"{first['name']} ({split} item {first['index']})"
        if first["name"]
        else f"{split} item {first['index']}"
    )
    if "transitions" in outputs:
        for name, figure in model.decoded_figures(table, first, title).items():
            pictures.save(figure, outputs[name])
    if "marginals" in outputs:
        names = [c[: -len("_marginals")] for c in merged.column_names if c.endswith("_marginals")]
        per_item = all(len(first[c]) == 1 for c in names)
        rows = merged.slice(0, MAX_ITEMS_PICTURED).to_pylist() if per_item else [first]
        marginals = {c: torch.tensor([p for r in rows for p in r[f"{c}_marginals"]]) for c in names}
        states = {c: torch.tensor([v for r in rows for v in r[c]]) for c in names}
        title = f"the first {len(rows)} {split} items" if per_item else title
        pictures.save(
            pictures.marginals_figure(
                marginals,
                states,
                title=f"{title}: posterior marginals",
                xlabel="item" if per_item else "time step",
                joined=not per_item,
            ),
            outputs["marginals"],
        )
