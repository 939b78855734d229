"""Large data out of core: generation, streamed sharded training, memory per rank against N.

    python experiments/scale.py [--sizes 10000 100000] [--steps 5] [--batch-size 16]

For each N it generates (or reuses, resumably) N ground-truth sequences under ``--data-dir``
(``enumdist.data.synthetic``: 8-state HMM, 88 keys, lengths 20-200), then trains in fresh gloo
process groups of 1 and 2 ranks (``torch.multiprocessing.spawn``), each rank streaming its own
minibatches from the shards (``enumdist.pipeline.streaming``) into a sharded ``EnumELBO``:

* the python-loop model (``enumdist.models.HMM``: one enumerated site per step) and
* the vectorised chain (``enumdist.models.fast_hmm.VectorisedHMM``: fused chain kernels),

and reports steps per second (data loading included, median over ``--steps`` after a warm-up),
peak RSS per rank (``VmHWM``), and the time per epoch *extrapolated* from the measured step time
(``N / (batch_size * ranks)`` steps). The results are printed and written as the ``scale``
section of BENCHMARKS.md (between ``<!-- scale:begin -->`` and ``<!-- scale:end -->``; the rest
of the file is kept).
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import platform
import socket
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from experiments import report  # noqa: E402

MODELS = {"loop": "enumdist.models.HMM", "vectorised": "enumdist.models.fast_hmm.VectorisedHMM"}


def peak_rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def dataset(data_dir: Path, num_items: int) -> tuple[Path, dict]:
    """Generate (or finish) the N-item data set; returns its root and generation figures."""
    from enumdist.data.synthetic import SyntheticSpec, generate

    # the spec of experiment=hmm_1m (conf/data/synthetic_shards.yaml) at N = num_items
    spec = SyntheticSpec.of_sizes(num_items, 1000, model="hmm", num_keys=88, hidden_dim=8)
    root = data_dir / f"hmm-{num_items}"
    existed = (root / "train").exists() and len(
        list((root / "train").glob("*.parquet"))
    ) * 1000 >= num_items
    start = time.perf_counter()
    generate(root, spec)
    seconds = time.perf_counter() - start
    size = sum(p.stat().st_size for p in root.rglob("*.parquet"))
    return root, {"seconds": None if existed else seconds, "bytes": size}


def _worker(rank, world, root, model_name, batch_size, steps, port, out_dir):

    import enumdist
    from enumdist.pipeline.module import apply_pyro_settings
    from enumdist.pipeline.streaming import ShardedSplit, StreamSampler

    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    importlib.import_module("torch._dynamo")  # before init_process_group: FACTS.md, gloo exit abort
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    apply_pyro_settings(validate=False)
    module, name = MODELS[model_name].rsplit(".", 1)
    model = getattr(__import__(module, fromlist=[name]), name)(num_keys=88, hidden_dim=8)
    kwargs = {"shard_plates": [model.shard_plate]} if world > 1 else {}
    elbo = enumdist.EnumELBO(max_plate_nesting=model.max_plate_nesting, **kwargs)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    split = ShardedSplit(root, "train")
    sampler = StreamSampler(split, rank, world, batch_size, seed=0)
    observations = int(split.lengths.astype("int64").sum())
    times = []
    batches = iter(sampler)
    for _ in range(steps + 1):  # the first step is a warm-up (planning, first reads)
        torch.distributed.barrier()
        start = time.perf_counter()
        keys = next(batches)
        batch = split.dense_batch([i for i, _ in keys], keys[0][1])
        loss = elbo.differentiable_loss(model.model, lambda batch: None, batch) / observations
        optimizer.zero_grad()
        loss.backward()
        for p in model.parameters():  # DDP's gradient average (sharded ELBO sums over ranks)
            if world > 1:
                torch.distributed.all_reduce(p.grad)
                p.grad /= world
        optimizer.step()
        torch.distributed.barrier()
        times.append(time.perf_counter() - start)
    result = {
        "rank": rank,
        "seconds_per_step": statistics.median(times[1:]),
        "peak_rss_mib": peak_rss_mib(),
        "loss": float(loss),
        "steps_per_epoch": len(sampler),
    }
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))
    torch.distributed.destroy_process_group()


def train_run(root: Path, model_name: str, world: int, batch_size: int, steps: int) -> list[dict]:
    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with tempfile.TemporaryDirectory() as out_dir:
        mp.spawn(
            _worker,
            args=(world, str(root), model_name, batch_size, steps, port, out_dir),
            nprocs=world,
        )
        return [json.loads(Path(out_dir, f"rank{r}.json").read_text()) for r in range(world)]


def run(args) -> tuple[list[tuple[str, str]], list[str]]:
    rows, notes = [], []

    def row(what, value):
        rows.append((what, value))
        print(f"[scale] {what}: {value}", flush=True)

    largest = max(args.sizes)
    for n in sorted(args.sizes):
        root, gen = dataset(Path(args.data_dir), n)
        rate = f"{n / gen['seconds']:.0f} sequences/s" if gen["seconds"] else "reused"
        row(
            f"N={n}: data on disk (Parquet, zstd, sparse rolls + true states); generation",
            f"{gen['bytes'] / 2**20:.1f} MiB; {rate}",
        )
        worlds = (1, 2) if n == largest else (2,)
        for model_name in ("loop", "vectorised") if n == largest else ("loop",):
            for world in worlds:
                ranks = train_run(root, model_name, world, args.batch_size, args.steps)
                seconds = max(r["seconds_per_step"] for r in ranks)
                epoch = ranks[0]["steps_per_epoch"] * seconds
                rss = ", ".join(f"{r['peak_rss_mib']:.0f}" for r in ranks)
                row(
                    f"N={n}, {model_name} model, {world} process(es), {args.batch_size} seq/rank/step: "
                    "steps/s; peak RSS per rank (MiB); epoch time (extrapolated)",
                    f"{1 / seconds:.2f}; {rss}; {epoch / 60:.1f} min ({ranks[0]['steps_per_epoch']} steps)",
                )
    notes.append(
        f"sizes measured: {sorted(args.sizes)}; 1 vs 2 processes and the vectorised chain "
        f"at N={largest} only (a step's cost does not depend on N)"
    )
    return rows, notes


def write_section(rows, notes, args, path: Path) -> None:
    lines = [
        "## scale: large data out of core",
        "",
        f"Generated by `python experiments/scale.py --sizes {' '.join(map(str, args.sizes))} "
        f"--steps {args.steps} --batch-size {args.batch_size}` on {datetime.date.today()}.",
        "",
        f"- machine: {platform.machine()}, {os.cpu_count()} CPU cores, shared with other jobs; "
        f"torch.set_num_threads(1) per rank; gloo",
        "- data: 8-state HMM, 88 keys, lengths 20-200 (mean 110); 1000 sequences per shard",
        "- steps/s: median over the timed steps after one warm-up, data loading from the "
        "shards included, barrier to barrier (the slowest rank); epoch time = steps per "
        "epoch x measured step time (extrapolated, not run)",
        *[f"- {note}" for note in notes],
        "",
        "| measurement | value |",
        "|---|---|",
        *[f"| {w} | {v} |" for w, v in rows],
        "",
    ]
    report.write_section(path, "scale", lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=16, help="sequences per rank per step")
    parser.add_argument("--data-dir", default=os.path.expanduser("~/.cache/enumdist/synthetic"))
    parser.add_argument("--out", default=str(ROOT / "BENCHMARKS.md"))
    args = parser.parse_args()
    rows, notes = run(args)
    write_section(rows, notes, args, Path(args.out))
    print(f"wrote the scale section of {args.out}")


if __name__ == "__main__":
    main()
