"""Large data out of core: generation, streamed sharded training, memory per rank against N.

    python experiments/scale.py [--sizes 10000 100000 1000000] [--steps 5] [--batch-size 16]
        [--recovery 1000000 --recovery-steps 300] [--decode 1000000 --decode-items 20000]

For each N it generates (or reuses, resumably) N ground-truth sequences under ``--data-dir``
(``enumdist.data.synthetic``: 8-state HMM, 88 keys, lengths 20-200), then trains in fresh gloo
process groups of 1 and 2 ranks (``torch.multiprocessing.spawn``), each rank streaming its own
minibatches from the shards (``enumdist.pipeline.streaming``) into a sharded ``EnumELBO``:

* the python-loop model (``enumdist.models.HMM``: one enumerated site per step) and
* the vectorised chain (``enumdist.models.fast_hmm.VectorisedHMM``: fused chain kernels),

and reports steps per second (data loading included, median over ``--steps`` after a warm-up),
peak RSS per rank (``VmHWM``), and the time per epoch *extrapolated* from the measured step time
(``N / (batch_size * ranks)`` steps).

``--recovery N`` trains the vectorised chain on N sequences from the known model (one process,
``enumdist.pipeline.recovery.fit_on_shards``, emissions seeded from distinct data frames) and reports the recovery figures on the held-out test
split (``recovery_report``: Hungarian relabelling, parameter errors, exact held-out loss against the
truth's, MAP agreement against the truth's). The learned weights are saved as a run directory
(config + ``checkpoints/last.ckpt``, the python-loop ``HMM``: the model that decodes) under
``--data-dir``/runs.

``--decode N`` decodes that run's training split (its first ``--decode-items``, default all) on 2
gloo ranks with the decoding stage (``enumdist.decoding.run_decoding``: items streamed from the
shards, chunks resumable, the merged Parquet written chunk by chunk) and reports items per second
(wall clock of the whole call: setup, decoding, merge) and peak RSS per rank. A rerun reuses the
chunks already written: only the items decoded by this run are counted.

The results are printed and written as the ``scale``
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
#: from this N on, 1 vs 2 processes and the vectorised chain are measured too
FULL_COMPARISON_FROM = 100_000


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


def spawn_ranks(worker, world: int, *args) -> list[dict]:
    """Run ``worker(rank, world, *args, port, out_dir)`` on ``world`` fresh processes; -> each
    rank's ``rank<r>.json``."""
    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with tempfile.TemporaryDirectory() as out_dir:
        mp.spawn(worker, args=(world, *args, port, out_dir), nprocs=world)
        return [json.loads(Path(out_dir, f"rank{r}.json").read_text()) for r in range(world)]


def train_run(root: Path, model_name: str, world: int, batch_size: int, steps: int) -> list[dict]:
    return spawn_ranks(_worker, world, str(root), model_name, batch_size, steps)


def write_run_dir(run_dir: Path, root: Path, state_dict: dict) -> Path:
    """A run directory as ``enumdist-train experiment=hmm_1m`` leaves it, as far as decoding reads
    it: the config's model/data/guide groups and the checkpoint (python-loop ``HMM``)."""
    from omegaconf import OmegaConf

    cfg = {
        "seed": 0,
        "model": {"_target_": MODELS["loop"], "num_keys": 88, "hidden_dim": 8},
        "data": {
            "_target_": "enumdist.pipeline.streaming.StreamingDataModule",
            "root": str(root),
            "generate": None,
        },
        "guide": {"_target_": "enumdist.pipeline.guides.empty", "_partial_": True},
    }
    (run_dir / ".hydra").mkdir(parents=True, exist_ok=True)
    (run_dir / "checkpoints").mkdir(exist_ok=True)
    OmegaConf.save(OmegaConf.create(cfg), run_dir / ".hydra" / "config.yaml")
    state = {f"model.{k}": v.detach().clone() for k, v in state_dict.items()}
    torch.save({"state_dict": state}, run_dir / "checkpoints" / "last.ckpt")
    return run_dir


def recovery_run(root: Path, steps: int, batch_size: int, run_dir: Path) -> dict:
    """Fit the vectorised chain to ``root``, then the recovery report on its test split."""
    from enumdist.data.synthetic import true_model
    from enumdist.models import HMM
    from enumdist.models.fast_hmm import VectorisedHMM
    from enumdist.pipeline.recovery import fit_on_shards, heldout_batches, recovery_report

    torch.set_num_threads(1)
    start = time.perf_counter()
    model = VectorisedHMM(num_keys=88, hidden_dim=8, seed=0)
    fitted = fit_on_shards(root, model, steps, batch_size, progress=True, seed_emission=True)
    seconds = time.perf_counter() - start
    write_run_dir(run_dir, root, fitted.state_dict())
    learned = HMM(num_keys=88, hidden_dim=8)
    learned.load_state_dict(fitted.state_dict())
    start = time.perf_counter()
    batches, states = heldout_batches(root, "test", batch_size=100)
    report = recovery_report(true_model(root), learned.double(), batches, states)
    report.update(
        fit_seconds=seconds,
        report_seconds=time.perf_counter() - start,
        heldout_items=sum(len(b["index"]) for b in batches),
    )
    return report


def _decode_worker(rank, world, run_dir, max_items, batch_size, port, out_dir):
    from enumdist.decoding import run_decoding

    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    importlib.import_module("torch._dynamo")  # before init_process_group: FACTS.md, gloo exit abort
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    torch.distributed.barrier()
    start = time.perf_counter()
    options = dict(split="train", max_items=max_items, decode_batch_size=batch_size)
    run_decoding(run_dir, dict(options, pictures=False, progress=rank == 0))
    torch.distributed.barrier()
    result = {"rank": rank, "seconds": time.perf_counter() - start, "peak_rss_mib": peak_rss_mib()}
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))
    torch.distributed.destroy_process_group()


def chunked_items(run_dir: Path) -> int:
    """Items in the decode chunks already written (their file names hold the item ranges)."""
    total = 0
    for chunk in (run_dir / "decoded" / "train-temperature0").glob("chunks-*/items-*.parquet"):
        start, stop = chunk.stem.split("-")[1:]
        total += int(stop) - int(start)
    return total


def decode_run(run_dir: Path, max_items: int | None, batch_size: int, world: int = 2) -> dict:
    before = chunked_items(run_dir)
    ranks = spawn_ranks(_decode_worker, world, str(run_dir), max_items, batch_size)
    decoded = chunked_items(run_dir) - before
    merged = run_dir / "decoded" / "train-temperature0" / "decoded.parquet"
    import pyarrow.parquet as pq

    return {
        "ranks": ranks,
        "items_this_run": decoded,
        "seconds": max(r["seconds"] for r in ranks),
        "rows": pq.ParquetFile(merged).metadata.num_rows,
        "bytes": merged.stat().st_size,
    }


def load_average() -> str:
    return "load average {:.1f}, {:.1f}, {:.1f}".format(*os.getloadavg())


def run(args) -> tuple[list[tuple[str, str]], list[str]]:
    rows, notes = [], []

    def row(what, value):
        rows.append((what, f"{value} ({load_average()})"))
        print(f"[scale] {what}: {rows[-1][1]}", flush=True)
        write_section(rows, notes, args, Path(args.out))  # a long run keeps what it measured

    peak_rss = {}
    for n in sorted(args.sizes):
        root, gen = dataset(Path(args.data_dir), n)
        rate = f"{n / gen['seconds']:.0f} sequences/s" if gen["seconds"] else "reused"
        row(
            f"N={n}: data on disk (Parquet, zstd, sparse rolls + true states); generation",
            f"{gen['bytes'] / 2**20:.1f} MiB; {rate}",
        )
        full = n >= FULL_COMPARISON_FROM
        for model_name in ("loop", "vectorised") if full else ("loop",):
            for world in (1, 2) if full else (2,):
                ranks = train_run(root, model_name, world, args.batch_size, args.steps)
                seconds = max(r["seconds_per_step"] for r in ranks)
                epoch = ranks[0]["steps_per_epoch"] * seconds
                rss = ", ".join(f"{r['peak_rss_mib']:.0f}" for r in ranks)
                if model_name == "loop" and world == 2:
                    peak_rss[n] = max(r["peak_rss_mib"] for r in ranks)
                row(
                    f"N={n}, {model_name} model, {world} process(es), {args.batch_size} seq/rank/step: "
                    "steps/s; peak RSS per rank (MiB); epoch time (extrapolated)",
                    f"{1 / seconds:.2f}; {rss}; {epoch / 60:.1f} min ({ranks[0]['steps_per_epoch']} steps)",
                )
    if len(peak_rss) > 1:
        small, large = min(peak_rss), max(peak_rss)
        row(
            f"peak RSS per rank, N={large} / N={small} (loop model, 2 processes; target <= 1.5)",
            f"{peak_rss[large]:.0f} / {peak_rss[small]:.0f} MiB = "
            f"{peak_rss[large] / peak_rss[small]:.2f}",
        )
    notes.append(
        f"sizes measured: {sorted(args.sizes)}; 1 vs 2 processes and the vectorised chain "
        f"from N={FULL_COMPARISON_FROM} on (a step's cost does not depend on N)"
    )
    run_dir = Path(args.data_dir) / "runs" / f"hmm-{args.recovery or args.decode}"
    if args.recovery:
        root, _ = dataset(Path(args.data_dir), args.recovery)
        report = recovery_run(root, args.recovery_steps, args.recovery_batch_size, run_dir)
        what = (
            f"N={args.recovery}, recovery: vectorised model, 1 process, emissions seeded from "
            f"data frames, {args.recovery_steps} steps of {args.recovery_batch_size} seq ({report['fit_seconds'] / 60:.1f} min); "
            f"held-out: the {report['heldout_items']} test items"
        )
        tv = [t for c in report["parameters"]["chains"].values() for t in c["row_tv"]]
        loss, agreement = report["loss_per_observation"], report["map_agreement"]
        passed = ", ".join(f"{k} {'pass' if v else 'FAIL'}" for k, v in report["passed"].items())
        row(
            f"{what}: largest abs parameter error after Hungarian relabelling (transition, "
            "emission); TV per transition row (max, mean)",
            f"{report['max_abs_error']:.4f}; {max(tv):.4f}, {statistics.mean(tv):.4f}",
        )
        row(
            f"N={args.recovery}, recovery: held-out loss per observation, learned vs the true "
            "parameters' (exact, EnumELBO); excess",
            f"{loss['learned']:.5f} vs {loss['truth']:.5f}; {loss['excess']:+.5f} nats",
        )
        row(
            f"N={args.recovery}, recovery: MAP agreement with the true states (relabelled), "
            "learned vs the true parameters'; checks (recovery.RecoveryThresholds defaults)",
            f"{agreement['learned']:.4f} vs {agreement['truth']:.4f}; {passed}",
        )
    if args.decode:
        if not (run_dir / "checkpoints" / "last.ckpt").exists():
            raise SystemExit(f"--decode {args.decode}: no run in {run_dir}; pass --recovery too")
        result = decode_run(run_dir, args.decode_items, args.decode_batch_size)
        rss = ", ".join(f"{r['peak_rss_mib']:.0f}" for r in result["ranks"])
        prefix = "all" if args.decode_items is None else f"the first {result['rows']}"
        row(
            f"N={args.decode}, decode {prefix} training items (python-loop HMM: MAP path, "
            f"log_joint, log_evidence, path_posterior), 2 processes, {args.decode_batch_size} "
            "seq/rank/step: items/s; peak RSS per rank (MiB); time",
            f"{result['items_this_run'] / result['seconds']:.1f}; {rss}; "
            f"{result['seconds'] / 60:.1f} min for {result['items_this_run']} items "
            f"(decoded.parquet: {result['rows']} rows, {result['bytes'] / 2**20:.1f} MiB)",
        )
        if args.decode_items is not None:
            row(
                f"N={args.decode}, decode all items at that rate (extrapolated, not run)",
                f"{args.decode / (result['items_this_run'] / result['seconds']) / 3600:.1f} h",
            )
    return rows, notes


def write_section(rows, notes, args, path: Path) -> None:
    lines = [
        "## scale: large data out of core",
        "",
        f"Generated by `python experiments/scale.py {' '.join(sys.argv[1:])}` on "
        f"{datetime.date.today()}.",
        "",
        f"- machine: {platform.machine()}, {os.cpu_count()} CPU cores, shared with other jobs; "
        f"torch.set_num_threads(1) per rank; gloo",
        "- data: 8-state HMM, 88 keys, lengths 20-200 (mean 110); 1000 sequences per shard",
        "- steps/s: median over the timed steps after one warm-up, data loading from the "
        "shards included, barrier to barrier (the slowest rank); epoch time = steps per "
        "epoch x measured step time (extrapolated, not run)",
        "- decoding: the python-loop HMM (one enumerated site per step, ``infer_discrete``): "
        "the vectorised chain enumerates no site and cannot decode; its checkpoint loads into "
        "the loop model (same parameters)",
        "- every value is followed by the load average when it was measured",
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
    parser.add_argument("--sizes", type=int, nargs="*", default=[10_000, 100_000])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=16, help="sequences per rank per step")
    parser.add_argument("--data-dir", default=os.path.expanduser("~/.cache/enumdist/synthetic"))
    parser.add_argument("--recovery", type=int, help="N: fit to N items, report the recovery")
    parser.add_argument("--recovery-steps", type=int, default=300)
    parser.add_argument("--recovery-batch-size", type=int, default=64)
    parser.add_argument("--decode", type=int, help="N: decode the --recovery run's training split")
    parser.add_argument("--decode-items", type=int, help="decode the first items only")
    parser.add_argument("--decode-batch-size", type=int, default=32, help="sequences per rank")
    parser.add_argument("--out", default=str(ROOT / "BENCHMARKS.md"))
    args = parser.parse_args()
    rows, notes = run(args)
    write_section(rows, notes, args, Path(args.out))
    print(f"wrote the scale section of {args.out}")


if __name__ == "__main__":
    main()
