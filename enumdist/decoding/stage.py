"""The decoding stage: decode a whole split of a trained run into Parquet files and pictures.

Layout under ``<run_dir>/decoded/<split>-temperature<t>/``:

``chunks-<fingerprint>/items-<start>-<stop>.parquet``  one file per rank's shard of one global
    step; it exists complete or not at all (temp file + ``os.replace``), so a rerun skips exactly
    the finished chunks. The fingerprint names the checkpoint file and the options that change
    the output (marginals, seed): a retrained run or other options never reuse stale chunks;
``decoded.parquet``                       all chunks in item order (written last, by rank 0);
``manifest.json``                         options, chunk list and outputs (written last).

``decoded.parquet`` has one row per item: ``index`` (position in the split), ``name`` (the
item's own name, e.g. a chorale's file name; null where the data names none), ``length``, one
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
import math
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
from enumdist.decoding.files import write_json, write_parquet
from enumdist.decoding.held_out import decoding_guide


@dataclasses.dataclass(frozen=True)
class DecodeOptions:
    split: str = "test"
    temperature: int = 0
    marginals: bool = False
    probabilities: bool = True  # per item: log p(z, x), log p(x), p(z | x)
    decode_batch_size: int = 32
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


def plan_steps(num_items: int, decode_batch_size: int, world_size: int) -> list[list[range]]:
    """Global steps, each a list of ``world_size`` contiguous, non-empty item ranges."""
    if num_items < world_size:
        raise ValueError(f"the split has {num_items} item(s), fewer than the {world_size} ranks")
    num_steps = math.ceil(num_items / (decode_batch_size * world_size))
    steps = []
    for step_items in torch.arange(num_items).tensor_split(num_steps):
        shards = step_items.tensor_split(world_size)
        steps.append([range(int(s[0]), int(s[-1]) + 1) for s in shards])
    return steps


def longest(table: dict[str, torch.Tensor], items: range) -> int | None:
    return int(table["lengths"][items.start : items.stop].max()) if "lengths" in table else None


def batch_of(table: dict[str, torch.Tensor], items: range, num_steps: int | None = None) -> dict:
    """The batch of a contiguous item range, in the pipeline's layout (``index``, ``num_total``);
    sequence fields are cut to ``num_steps`` (default: the range's longest item)."""
    num_total = next(iter(table.values())).shape[0]
    batch = {k: t[items.start : items.stop] for k, t in table.items()}
    if "lengths" in batch:
        num_steps = max(num_steps or int(batch["lengths"].max()), 1)
        batch.update(
            {k: v[:, :num_steps] for k, v in batch.items() if k != "lengths" and v.dim() >= 2}
        )
    return dict(batch, index=torch.arange(items.start, items.stop), num_total=num_total)


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
    cfg = ckpt.load_run_config(run_dir)
    checkpoint = ckpt.find_checkpoint(run_dir, options.checkpoint)
    state_dict = ckpt.load_state_dict(checkpoint)
    model = ckpt.build_model(cfg, state_dict, checkpoint)

    datamodule = instantiate(cfg.data)
    items = datamodule.load_split(options.split)  # raises on empty splits and NaN fields
    table, names = items.table, getattr(items, "names", None)
    num_items = next(iter(table.values())).shape[0]
    items_of = lambda r, steps=None: batch_of(table, r, steps)  # noqa: E731
    model.validate_items(items_of(range(num_items)), f"split {options.split!r}")
    guide = decoding_guide(  # held-out items of per-item guide latents: folded in first
        cfg, model, items_of, num_items, state_dict, checkpoint, options.split, options.seed
    )

    out_dir = run_dir / "decoded" / f"{options.split}-temperature{options.temperature}"
    chunk_dir = out_dir / f"chunks-{fingerprint(checkpoint, options)}"
    steps = plan_steps(num_items, options.decode_batch_size, world_size)
    pending = _broadcast(
        [
            s
            for s, shards in enumerate(steps)
            if not all(chunk_path(chunk_dir, r).exists() for r in shards)
        ]
        if rank == 0
        else None,
        world_size,
    )
    shard_plates = [model.shard_plate] if world_size > 1 else None
    for step in tqdm(
        pending,
        desc=f"decoding {options.split}",
        unit="chunk",
        disable=rank != 0 or not options.progress,
    ):
        items = steps[step][rank]
        # every rank cuts to the global step's longest item: the same sites on every rank
        batch = items_of(items, longest(table, range(steps[step][0].start, steps[step][-1].stop)))
        pyro.set_rng_seed(options.seed + step)
        decoded = decode_batch(
            model,
            guide,
            batch,
            temperature=options.temperature,
            marginals=options.marginals,
            probabilities=options.probabilities,
            shard_plates=shard_plates,
            items_in_step=steps[step][-1].stop - steps[step][0].start,
        )
        item_names = names[items.start : items.stop] if names is not None else None
        write_chunk(chunk_path(chunk_dir, items), to_table(batch, decoded, item_names))
    if world_size > 1:
        dist.barrier()

    outputs = {"decoded": out_dir / "decoded.parquet", "manifest": out_dir / "manifest.json"}
    if options.pictures:
        if model.transition_matrices():
            outputs.update(
                transitions=run_dir / "transitions.png",
                piano_roll=run_dir / "piano_roll_states.png",
            )
        if options.marginals:
            outputs.update(marginals=run_dir / "marginals.png")
    if rank == 0:
        chunks = [chunk_path(chunk_dir, r) for shards in steps for r in shards]
        merged = pa.concat_tables([pq.read_table(p) for p in chunks])
        write_parquet(merged, outputs["decoded"])
        if options.pictures:
            _draw(model, table, merged, outputs, options.split)
        write_json(
            {
                "options": dataclasses.asdict(options),
                "run_dir": str(run_dir),
                "checkpoint": str(checkpoint),
                "model": cfg.model.get("_target_"),
                "num_items": num_items,
                "world_size": world_size,
                "chunks": [str(p.relative_to(out_dir)) for p in chunks],
                "outputs": {k: str(v) for k, v in outputs.items()},
            },
            outputs["manifest"],
        )
    if world_size > 1:
        dist.barrier()
    return outputs


#: the marginals picture of a model with one state per item shows this many items
MAX_ITEMS_PICTURED = 100


def _draw(model, table: dict, merged: pa.Table, outputs: dict, split: str) -> None:
    """The pictures of ``outputs`` (rank 0): the split's first item, or, for states with one
    position per item (a mixture's assignment), the split's first items side by side."""
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
