"""enumdist vs Pyro on the chorale HMM; writes BENCHMARKS.md (ratios measured in one process).

    python experiments/benchmark.py            # full run (a few minutes on 2 cores)
    python experiments/benchmark.py --quick    # fewer repeats, smaller long/sharded runs, no JIT

Contenders, all on the same model and data (train chorales, active keys, 16 states, float32,
one thread): Pyro ``TraceEnum_ELBO`` / ``infer_discrete`` on the python-loop model, enumdist's
``EnumELBO`` / ``infer_discrete`` on the same python-loop model, the fused chain path
(``enumdist.engine.chain``) through ``Trace_ELBO`` on the vectorised model, and a hand-written
log-sum-exp forward loop under autograd. Times are the median of repeats after one warm-up call.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import os
import platform
import statistics
import subprocess
import sys
import time

import pyro
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO, TraceEnum_ELBO

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import enumdist  # noqa: E402
from enumdist.data import load_chorales  # noqa: E402
from enumdist.engine.chain import chain_log_likelihood, chain_map  # noqa: E402
from experiments.bench_models import (  # noqa: E402
    chain_inputs,
    chain_model,
    empty_guide,
    loop_model,
    naive_forward_loss,
)
from experiments.processes import json_results  # noqa: E402
from experiments.report import write_section  # noqa: E402

MEDIANS: dict = {}  # fn name -> median seconds of the last timed() call, for the report


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn, repeats, name=None):
    """(best seconds over ``repeats`` calls after one warm-up call, last result).

    The best of several runs is the least noisy estimate of a cost on a shared machine (other
    jobs only ever add time); the median is kept in :data:`MEDIANS` under ``name``.
    """
    result = fn()
    times = []
    for _ in range(repeats):
        seconds, result = once(fn)
        times.append(seconds)
    if name:
        MEDIANS[name] = statistics.median(times)
    return min(times), result


def interleaved(contenders, rounds):
    """Time several functions in alternation, so that a busy spell of the machine falls on all
    of them alike: ``{name: (fn, calls per round)}`` -> ``[(best seconds, last result)]`` in
    order (medians go to :data:`MEDIANS`)."""
    results = {name: fn() for name, (fn, _) in contenders.items()}  # warm-up
    times = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, (fn, calls) in contenders.items():
            for _ in range(calls):
                seconds, results[name] = once(fn)
                times[name].append(seconds)
    for name in contenders:
        MEDIANS[name] = statistics.median(times[name])
    return [(min(times[name]), results[name]) for name in contenders]


def once(fn):
    """(seconds, result) of one call. As ``timeit`` does, the garbage of earlier calls is
    collected first and the collector is off during the call: one contender's garbage must not
    be collected on the other's clock."""
    gc.collect()
    gc.disable()
    try:
        _sync()
        start = time.perf_counter()
        result = fn()
        _sync()
        return time.perf_counter() - start, result
    finally:
        gc.enable()


def elbo_step(elbo, model, *args):
    def step():
        pyro.clear_param_store()
        return elbo.loss_and_grads(model, empty_guide, *args)

    return step


def decoded_states(decoder, sequences, lengths):
    trace = poutine.trace(decoder(loop_model, first_available_dim=-3, temperature=0)).get_trace(
        sequences, lengths
    )
    return torch.stack(
        [trace.nodes[f"x_{t}"]["value"].reshape(-1) for t in range(sequences.shape[1])], dim=1
    )


def subprocess_json(args, timeout, copies=1):
    """Run ``bench_subprocess.py ARGS`` (``copies`` of it side by side); its JSON line(s)."""
    # large blocks via mmap, returned to the OS when freed: ru_maxrss then tracks live memory
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="65536")
    command = [
        sys.executable,
        os.path.join(ROOT, "experiments", "bench_subprocess.py"),
        *map(str, args),
    ]
    procs = [
        subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        for _ in range(copies)
    ]
    results = json_results(procs, timeout, error_tail=2000)
    return results[0] if copies == 1 else results


def run(quick: bool, device: str = "cpu"):
    torch.set_num_threads(1)
    on_gpu = device != "cpu"
    # a default-device mode intercepts every torch call: install it only where it is needed
    torch.set_default_device(device if on_gpu else None)
    repeats = 1 if quick else 5
    rows, notes = [], []

    def row(target, what, value, goal=""):
        rows.append((target, what, value, goal))
        print(f"[{target}] {what}: {value} {goal}", flush=True)

    train = load_chorales("train", progress=False)
    train = train.restrict_keys(train.active_keys())
    seqs, lengths = train.sequences.to(device), train.lengths.to(device)
    n, t, k = seqs.shape
    notes.append(
        f"data: train chorales, N={n} sequences, T={t} steps max, K={k} keys, "
        f"{int(lengths.sum())} observed steps, 16 hidden states, float32"
    )

    # 5 first call (planning), then 1 the steady-state step: EnumELBO vs TraceEnum_ELBO
    enum_elbo = enumdist.EnumELBO(max_plate_nesting=2)
    first, _ = once(elbo_step(enum_elbo, loop_model, seqs, lengths))
    (enum_s, enum_loss), (pyro_s, pyro_loss) = interleaved(
        {
            "enum": (elbo_step(enum_elbo, loop_model, seqs, lengths), 3),
            "pyro": (elbo_step(TraceEnum_ELBO(max_plate_nesting=2), loop_model, seqs, lengths), 1),
        },
        repeats + 3,
    )
    row("5", "EnumELBO first call / later call (s)", f"{first:.2f} / {enum_s:.2f}", "first < 2 s")
    row("1", "ELBO+grad, python-loop model: TraceEnum_ELBO (s)", f"{pyro_s:.3f}")
    row("1", "ELBO+grad, python-loop model: EnumELBO (s)", f"{enum_s:.3f}")
    goal = ">= 100x" if on_gpu else ">= 10x"
    row("1", "speed-up EnumELBO vs TraceEnum_ELBO", f"{pyro_s / enum_s:.1f}x", goal)
    row("1", "the same from median times", f"{MEDIANS['pyro'] / MEDIANS['enum']:.1f}x")

    # 2 fused chain path vs TraceEnum_ELBO and the naive loop
    chain_s, chain_loss = timed(elbo_step(Trace_ELBO(), chain_model, seqs, lengths), repeats * 3)

    def naive():
        pyro.clear_param_store()
        loss = naive_forward_loss(seqs, lengths)
        loss.backward()
        return float(loss.detach())

    naive_s, naive_loss = timed(naive, repeats * 3)

    def raw_chain():
        pyro.clear_param_store()
        loss = -chain_log_likelihood(*chain_inputs(seqs), lengths).sum()
        loss.backward()
        return float(loss.detach())

    raw_s, _ = timed(raw_chain, repeats * 3)
    row("2", "ELBO+grad, chain path via Trace_ELBO (s)", f"{chain_s:.4f}")
    row("2", "loss+grad, chain_log_likelihood alone (s)", f"{raw_s:.4f}")
    row("2", "loss+grad, naive log-sum-exp loop, autograd (s)", f"{naive_s:.4f}")
    row(
        "2",
        "speed-up chain path (Trace_ELBO) vs TraceEnum_ELBO",
        f"{pyro_s / chain_s:.1f}x",
        ">= 100x" if on_gpu else ">= 30x",
    )
    row("2", "speed-up chain path (Trace_ELBO) vs naive loop", f"{naive_s / chain_s:.2f}x", "> 1x")
    rel = lambda a, b: abs(a - b) / abs(b)  # noqa: E731
    row(
        "2",
        "loss rel. diff chain / EnumELBO / naive vs TraceEnum_ELBO (float32)",
        f"{rel(chain_loss, pyro_loss):.1e} / {rel(enum_loss, pyro_loss):.1e} / "
        f"{rel(naive_loss, pyro_loss):.1e}",
        "float32 noise (~1e-7)",
    )

    # 3 MAP decoding of the whole set
    pyro.clear_param_store()
    pyro_map_s, pyro_states = timed(
        lambda: decoded_states(pyro.infer.infer_discrete, seqs, lengths), repeats
    )
    enum_map_s, enum_states = timed(
        lambda: decoded_states(enumdist.infer_discrete, seqs, lengths), repeats
    )

    def viterbi():
        with torch.no_grad():
            return chain_map(*chain_inputs(seqs), lengths)

    chain_map_s, chain_states = timed(viterbi, repeats * 3)
    row(
        "3",
        "MAP: Pyro infer_discrete / enumdist.infer_discrete / chain_map (s)",
        f"{pyro_map_s:.3f} / {enum_map_s:.3f} / {chain_map_s:.4f}",
    )
    row(
        "3", "speed-up enumdist.infer_discrete vs Pyro", f"{pyro_map_s / enum_map_s:.1f}x", ">= 20x"
    )
    row("3", "speed-up chain_map vs Pyro", f"{pyro_map_s / chain_map_s:.1f}x", ">= 20x")
    enum_states, chain_states, pyro_states = (
        x.cpu() for x in (enum_states, chain_states, pyro_states)
    )
    row(
        "3",
        "identical states (enumdist.infer_discrete, chain_map) vs Pyro",
        f"{torch.equal(enum_states, pyro_states)}, {torch.equal(chain_states, pyro_states)}",
        "True, True",
    )

    # 7 float32 vs float64
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        seqs64 = seqs.double()
        enum64 = elbo_step(enumdist.EnumELBO(max_plate_nesting=2), loop_model, seqs64, lengths)()
        chain64 = elbo_step(Trace_ELBO(), chain_model, seqs64, lengths)()
    finally:
        torch.set_default_dtype(old)
    row(
        "7",
        "rel. error float32 vs float64 loss: EnumELBO / chain path",
        f"{rel(enum_loss, enum64):.1e} / {rel(chain_loss, chain64):.1e}",
    )

    torch.set_default_device(None)
    if on_gpu:  # the remaining parts measure CPU processes (RSS, gloo)
        notes.append(f"device: {torch.cuda.get_device_name()}; targets 4 and 6 run on CPU only")
        return rows, notes

    # 4 long chains: sequential vs scan (and the naive loop's memory), fresh process each
    long_t = 2000 if quick else 10000
    long_n, long_s = 4, 16
    results = {
        m: subprocess_json(["long", m, long_t, long_n, long_s], timeout=300)
        for m in ("sequential", "scan", "naive")
    }
    mib = lambda b: b / 2**20  # noqa: E731
    row(
        "4",
        f"long chain T={long_t}, N={long_n}, S={long_s}: loss+grad sequential / scan / naive (s)",
        " / ".join(f"{results[m]['seconds']:.3f}" for m in results),
    )
    row(
        "4",
        "speed-up scan vs sequential",
        f"{results['sequential']['seconds'] / results['scan']['seconds']:.2f}x",
        "> 1x",
    )
    row(
        "4",
        "peak RSS growth (VmHWM, fresh process) sequential / scan / naive (MiB)",
        " / ".join(f"{mib(results[m]['peak_rss_growth']):.1f}" for m in results),
        f"N·T·S = {mib(long_n * long_t * long_s * 4):.1f} MiB, "
        f"N·T·S² = {mib(long_n * long_t * long_s**2 * 4):.1f} MiB",
    )
    same = max(
        abs(a - b) / abs(b)
        for a, b in zip(results["scan"]["log_z"], results["sequential"]["log_z"])
    )
    row("4", "scan vs sequential log Z rel. diff", f"{same:.1e}")

    # 5 JIT reference
    if quick:
        row("5", "JitTraceEnum_ELBO first call", "skipped (--quick)")
    else:
        try:
            jit = subprocess_json(["jit"], timeout=60)
            row(
                "5",
                "JitTraceEnum_ELBO first / second call (s)",
                f"{jit['first']:.1f} / {jit['second']:.2f}",
            )
        except subprocess.TimeoutExpired:
            row("5", "JitTraceEnum_ELBO first call", "skipped: > 60 s")

    # 6 sharded over 2 gloo processes
    tile, steps = (1, 1) if quick else (8, 4)
    shard = {w: subprocess_json(["shard", w, tile, steps], timeout=400) for w in (1, 2)}
    per_s = {w: shard[w]["observed_steps"] / shard[w]["seconds_per_step"] for w in shard}
    row(
        "6",
        f"sharded EnumELBO, chorales tiled {tile}x (N={shard[1]['num_sequences']}): "
        "observed steps/s, 1 / 2 processes",
        f"{per_s[1]:.0f} / {per_s[2]:.0f} ({per_s[2] / per_s[1]:.2f}x)",
    )
    row(
        "6",
        "bytes all-reduced per step (2 processes), loss 1 vs 2 processes",
        f"{shard[2]['comm_bytes']}, {shard[1]['loss']:.1f} vs {shard[2]['loss']:.1f}",
    )
    if tile % 2 == 0:  # what 2 processes on this machine can give at all: no communication
        pair = subprocess_json(["shard", 1, tile // 2, steps], timeout=400, copies=2)
        ceiling = sum(r["observed_steps"] / r["seconds_per_step"] for r in pair)
        row(
            "6",
            "ceiling: 2 independent 1-process runs on half the data each, side by side: "
            "observed steps/s together",
            f"{ceiling:.0f} ({ceiling / per_s[1]:.2f}x)",
        )
    return rows, notes


def write_markdown(rows, notes, quick, path):
    lines = [
        "## The chorale HMM against Pyro",
        "",
        f"Generated by `python experiments/benchmark.py{' --quick' if quick else ''}` on "
        f"{datetime.date.today().isoformat()}.",
        "",
        f"- machine: {platform.machine()}, {os.cpu_count()} CPU cores "
        f"({platform.processor() or platform.platform()}), shared with other jobs",
        f"- threads: torch.set_num_threads(1); torch {torch.__version__}, "
        f"pyro-ppl {pyro.__version__}, Python {platform.python_version()}",
        *[f"- {note}" for note in notes],
        "- times are the best of several repeats after a warm-up call (the least noisy "
        "estimate on a shared machine; target 1 also shows the ratio of medians, and times its "
        "two contenders in alternation); as in `timeit`, garbage is collected before and the "
        "collector is off during each timed call; ratios come from the same process",
        "",
        "| target | measurement | value | goal |",
        "|---|---|---|---|",
        *[f"| {t} | {w} | {v} | {g} |" for t, w, v, g in rows],
        "",
    ]
    write_section(path, "chorale", lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats, smaller runs, no JIT")
    parser.add_argument(
        "--out", default=None, help="default: BENCHMARKS.md (BENCHMARKS_GPU.md with --device cuda)"
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda (targets 1, 2, 3, 5, 7)")
    args = parser.parse_args()
    args.out = args.out or os.path.join(
        ROOT, "BENCHMARKS.md" if args.device == "cpu" else "BENCHMARKS_GPU.md"
    )
    rows, notes = run(args.quick, args.device)
    write_markdown(rows, notes, args.quick, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
