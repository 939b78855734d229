"""One long chain (T = 10^6, N = 1) on 1 vs 2 processes, its time axis split across ranks;
writes the "DiscreteHMM" section's time-sharding table (via benchmark_hmm's section writer).

    python experiments/benchmark_time_sharding.py [--steps 1000000] [--states 16 64]
    python experiments/benchmark_time_sharding.py --recovery [--steps 100000] [--states 4 8]

``--recovery`` adds (or replaces) only the section's "recovery" rows, keeping every other line
verbatim: a Gaussian HMM trained full batch on one synthetic chain from known parameters
(``experiment=long_chain``'s model and data; one process, the objective the time-sharded
pipeline computes exactly), compared with the truth after Hungarian relabelling.

Each configuration runs in fresh processes (gloo, one thread each), so peak RSS (VmHWM) is per
rank. One process runs ``enumdist.DiscreteHMM(...).log_prob`` on the whole chain; two run
``TimeShardedChain.log_likelihood`` on their halves, then average the gradients. float64, so
the two log Z can be compared to the last digits.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from experiments.processes import json_results  # noqa: E402

SECTION = "## DiscreteHMM: one chain split by time"


def _vm_hwm_mib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker(args):
    import pyro.distributions as pd
    import torch
    import torch._dynamo  # imported before init_process_group (gloo exit-time abort)
    import torch.distributed as tdist

    import enumdist
    from enumdist.data.long_chain import split_by_time
    from enumdist.engine.time_sharding import TimeShardedChain, average_gradients

    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float64)
    s, steps, world, rank = args.states, args.steps, args.world, args.rank
    g = torch.Generator().manual_seed(0)
    params = [
        torch.randn(s, generator=g),
        torch.randn(s, s, generator=g) + 3 * torch.eye(s),
        torch.linspace(-3, 3, s),
    ]
    for p in params:
        p.requires_grad_()
    y = torch.randn(1, steps, generator=g) * 2
    baseline = _vm_hwm_mib()
    sharded = world > 1 or args.block_of > 1
    if sharded:  # --block-of W on one process: rank 0's share of the work, nobody to wait for
        tdist.init_process_group(
            "gloo", init_method=f"tcp://127.0.0.1:{args.port}", rank=rank, world_size=world
        )
        chain = TimeShardedChain(method=args.method)
        local = split_by_time(y, rank, max(world, args.block_of)).contiguous()
    del_bytes = {"chain": 0, "gradients": sum(p.numel() * p.element_size() for p in params)}

    def step():
        for p in params:
            p.grad = None
        init, trans, loc = params
        if not sharded:
            log_z = enumdist.DiscreteHMM(
                init, trans, pd.Normal(loc, 1.0), method=args.method
            ).log_prob(y)
        else:
            emissions = pd.Normal(loc, 1.0).log_prob(local.unsqueeze(-1))
            log_z = chain.log_likelihood(init.log_softmax(-1), trans.log_softmax(-1), emissions)
        (-log_z.sum()).backward()
        if sharded:
            average_gradients(params)
            del_bytes["chain"] = chain.bytes_communicated
        return float(log_z.detach().sum())

    start = time.perf_counter()
    log_z = step()  # warm-up (timed too: with --repeats 0 the only measurement)
    times = [time.perf_counter() - start] if args.repeats == 0 else []
    for _ in range(args.repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    out = {
        "rank": rank,
        "seconds": min(times),
        "log_z": log_z,
        "baseline_rss_mib": baseline,
        "peak_rss_mib": _vm_hwm_mib(),
        "bytes": del_bytes if world > 1 else None,
        "grad_norm": float(sum(p.grad.norm() ** 2 for p in params) ** 0.5),
    }
    print(json.dumps(out), flush=True)
    if sharded:
        tdist.destroy_process_group()


def launch(world, states, steps, repeats, method, timeout, block_of=1):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--worker",
                "--world",
                str(world),
                "--rank",
                str(r),
                "--states",
                str(states),
                "--steps",
                str(steps),
                "--repeats",
                str(repeats),
                "--method",
                method,
                "--port",
                str(port),
                "--block-of",
                str(block_of),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for r in range(world)
    ]
    results = json_results(procs, timeout)
    return results


def run(steps, states_list, repeats, method, timeout=1200):
    rows = []
    for s in states_list:
        one = launch(1, s, steps, repeats, method, timeout)[0]
        two = launch(2, s, steps, repeats, method, timeout)
        step_2 = max(r["seconds"] for r in two)  # a step ends when the slower rank ends
        alone = launch(1, s, steps, repeats, method, timeout, block_of=2)[0]
        b = two[0]["bytes"]
        case = f"one chain T={steps:.0e}, N=1, S={s}, float64"
        rows += [
            (
                case,
                "loss+grad, 1 process / 2 processes (s)",
                f"{one['seconds']:.2f} / {step_2:.2f}",
                f"{one['seconds'] / step_2:.2f}x",
                "2 processes on 2 cores shared with other jobs",
            ),
            (
                case,
                "ceiling: rank 0's share of a step, alone in one process (s)",
                f"{alone['seconds']:.2f}",
                f"{one['seconds'] / alone['seconds']:.2f}x",
                "the 2-process step with a free core per rank",
            ),
            (
                case,
                "peak RSS (VmHWM) per rank, 1 process / 2 processes (MiB)",
                f"{one['peak_rss_mib']:.0f} / "
                + ", ".join(f"{r['peak_rss_mib']:.0f}" for r in two),
                "",
                f"after imports and data: {one['baseline_rss_mib']:.0f} MiB",
            ),
            (
                case,
                "bytes sent+received per step per rank (2 processes)",
                f"{b['chain']} + {b['gradients']}",
                "",
                "transfer matrices, header, + gradient average; independent of T",
            ),
            (
                case,
                "log Z, 1 process vs 2 processes",
                f"{one['log_z']:.10f} vs {two[0]['log_z']:.10f}",
                "",
                f"rel. diff {abs(one['log_z'] - two[0]['log_z']) / abs(one['log_z']):.1e}",
            ),
        ]
        for r in rows[-5:]:
            print(r, flush=True)
    return rows


RECOVERY_NOTE = (
    "recovery rows: `{command}`; Adam (lr 0.05) full batch on -log p(y)/T of one train chain, "
    "one process; errors after Hungarian relabelling on the means; MAP agreement on a held-out "
    "chain of T/10 steps against the MAP path under the true parameters"
)


def recovery(steps, states_list, train_steps, seed):
    """Rows: train on one synthetic chain of ``steps`` steps, compare with the truth."""
    import torch

    from enumdist.data.long_chain import synthetic_long_chain, synthetic_long_chain_split
    from enumdist.models.long_chain_hmm import GaussianLongChainHMM
    from enumdist.pipeline.long_chain_recovery import fit_full_batch, long_chain_recovery

    torch.set_num_threads(1)
    rows = []
    for s in states_list:
        truth, _ = synthetic_long_chain(2, s, seed=seed)
        y = synthetic_long_chain_split("train", steps, s, seed=seed)["observations"]
        y_eval = synthetic_long_chain_split("valid", steps, s, seed=seed)["observations"]
        model = GaussianLongChainHMM(s, loc_init_scale=2.0, seed=0).double()
        start = time.perf_counter()
        history = fit_full_batch(model, y, train_steps)
        seconds = time.perf_counter() - start
        r = long_chain_recovery(model, truth, y_eval)
        case = f"recovery: one chain T={steps:.0e}, S={s}, seed {seed}, float64"
        rows += [
            (
                case,
                f"{train_steps} full-batch steps: loss per step first / last; time (s)",
                f"{history[0]:.4f} / {history[-1]:.4f}; {seconds:.0f}",
                "",
                "one process on a core shared with other jobs",
            ),
            (
                case,
                "max abs error of means / transition probabilities; max row TV",
                f"{r['max_abs_error_loc']:.4f} / {r['max_abs_error_transition']:.4f}; "
                f"{r['max_row_tv']:.4f}",
                "",
                "after Hungarian relabelling",
            ),
            (
                case,
                "MAP agreement with the true parameters' MAP path (held-out chain)",
                f"{r['map_agreement']:.4f}",
                "",
                f"{y_eval.shape[1]} steps",
            ),
        ]
        for row in rows[-3:]:
            print(row, flush=True)
    return rows


def merge_recovery_rows(path, rows, command):
    """The time_sharding section with its recovery rows (and note) replaced by ``rows``;
    every other line kept verbatim."""
    from pathlib import Path

    from experiments import report

    begin, end = report.markers("time_sharding")
    body = Path(path).read_text().split(begin, 1)[1].split(end, 1)[0].strip("\n").splitlines()
    lines = [line for line in body if not line.startswith(("| recovery", "- recovery rows"))]
    last_note = max(i for i, line in enumerate(lines) if line.startswith("- "))
    lines.insert(last_note + 1, "- " + RECOVERY_NOTE.format(command=command))
    last_row = max(i for i, line in enumerate(lines) if line.startswith("|"))
    lines[last_row + 1 : last_row + 1] = [f"| {' | '.join(map(str, r))} |" for r in rows]
    report.write_section(path, "time_sharding", lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--world", type=int, default=1)
    parser.add_argument("--rank", type=int, default=0)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--block-of", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--recovery", action="store_true", help="the recovery rows only")
    parser.add_argument("--train-steps", type=int, default=200, help="--recovery: Adam steps")
    parser.add_argument("--seed", type=int, default=5, help="--recovery: the truth's seed")
    parser.add_argument("--steps", type=int, default=None, help="default 10^6 (10^5 recovery)")
    parser.add_argument("--states", type=int, nargs="+", default=None, help="16 64 (4 8)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--method", default="auto")
    parser.add_argument("--out", default=os.path.join(ROOT, "BENCHMARKS.md"))
    args = parser.parse_args()
    if args.recovery:
        rows = recovery(args.steps or 100_000, args.states or [4, 8], args.train_steps, args.seed)
        command = f"python experiments/benchmark_time_sharding.py {' '.join(sys.argv[1:])}"
        merge_recovery_rows(args.out, rows, command.strip())
        print(json.dumps(rows))
        return None
    args.steps, args.states = args.steps or 1_000_000, args.states or [16, 64]
    if args.worker:
        args.states = args.states[0]
        return worker(args)
    from experiments.benchmark_hmm import write_section

    rows = run(args.steps, args.states, args.repeats, args.method)
    notes = [
        "fresh processes per configuration, gloo, torch.set_num_threads(1) each; "
        "`--repeats` timed steps after a warm-up (0: the warm-up itself); a 2-process "
        "step is the slower rank's",
        "ratio = 1-process time / this time",
    ]
    command = f"python experiments/benchmark_time_sharding.py {' '.join(sys.argv[1:])}".strip()
    write_section(
        rows,
        notes,
        command,
        args.out,
        SECTION,
        ("case", "measurement", "value", "ratio", "notes"),
        name="time_sharding",
    )
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
