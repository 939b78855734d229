"""Benchmark parts that need a fresh process; each prints one JSON line on stdout.

    python experiments/bench_subprocess.py long METHOD T N S    # long chain: time + peak RSS
    python experiments/bench_subprocess.py jit                  # JitTraceEnum_ELBO first call
    python experiments/bench_subprocess.py shard WORLD TILE STEPS

Peak memory of a long-chain variant is the growth of ``VmHWM`` (the process's peak resident
set) across one forward+backward, measured after the inputs exist: what that variant's graph,
saved tensors and workspace added at their peak.
"""

from __future__ import annotations

import gc
import json
import os
import resource
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from experiments.bench_models import empty_guide, loop_model

torch.set_num_threads(1)


def _maxrss_bytes() -> int:
    """Peak RSS of this process image: VmHWM (``ru_maxrss`` would keep the parent's peak
    across fork+exec)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # pragma: no cover


def naive_log_z(init, trans, emissions, lengths):
    alpha = init + emissions[:, 0]
    for t in range(1, emissions.shape[1]):
        new = torch.logsumexp(alpha.unsqueeze(-1) + trans, dim=-2) + emissions[:, t]
        alpha = torch.where((t < lengths).unsqueeze(-1), new, alpha)
    return torch.logsumexp(alpha, dim=-1)


def long_chain(method, length, num_sequences, num_states, warm_up=True):
    from enumdist.engine.chain import chain_log_likelihood

    if warm_up:  # one-off allocations (kernels, thread pools) are not this variant's memory
        long_chain(method, 64, num_sequences, num_states, warm_up=False)
    generator = torch.Generator().manual_seed(0)
    init = torch.randn(num_states, generator=generator).log_softmax(-1).requires_grad_()
    trans = (
        torch.randn(num_states, num_states, generator=generator).log_softmax(-1).requires_grad_()
    )
    emissions = torch.randn(num_sequences, length, num_states, generator=generator).requires_grad_()
    lengths = torch.full((num_sequences,), length)
    lengths[1::2] = length - length // 7  # ragged

    def step():
        if method == "naive":
            log_z = naive_log_z(init, trans, emissions, lengths)
        else:
            log_z = chain_log_likelihood(init, trans, emissions, lengths, method)
        log_z.sum().backward()
        return log_z.detach()

    before = _maxrss_bytes()
    start = time.perf_counter()
    log_z = step()
    first = time.perf_counter() - start
    peak = _maxrss_bytes() - before
    start = time.perf_counter()
    step()
    second = time.perf_counter() - start
    return {
        "method": method,
        "seconds": min(first, second),
        "peak_rss_growth": peak,
        "log_z": log_z.tolist(),
    }


def jit_first_call():
    import pyro
    from pyro.infer import JitTraceEnum_ELBO

    from enumdist.data import load_chorales

    train = load_chorales("train", progress=False)
    train = train.restrict_keys(train.active_keys())
    elbo = JitTraceEnum_ELBO(max_plate_nesting=2)
    start = time.perf_counter()
    elbo.loss_and_grads(loop_model, empty_guide, train.sequences, train.lengths)
    first = time.perf_counter() - start
    start = time.perf_counter()
    elbo.loss_and_grads(loop_model, empty_guide, train.sequences, train.lengths)
    pyro.clear_param_store()
    return {"first": first, "second": time.perf_counter() - start}


def _shard_worker(rank, world, tile, steps, port, out_path):
    import pyro
    import torch.distributed as tdist

    import enumdist
    from enumdist.data import load_chorales

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    tdist.init_process_group("gloo", rank=rank, world_size=world)
    train = load_chorales("train", progress=False)
    train = train.restrict_keys(train.active_keys())
    sequences = train.sequences.repeat(tile, 1, 1)
    lengths = train.lengths.repeat(tile)
    local_sequences = sequences.chunk(world)[rank]
    local_lengths = lengths.chunk(world)[rank]
    pyro.clear_param_store()
    elbo = enumdist.EnumELBO(max_plate_nesting=2, shard_plates=["sequences"])
    elbo.loss_and_grads(loop_model, empty_guide, local_sequences, local_lengths)  # warm-up
    times = []
    for _ in range(steps):  # best step, each timed from a common start to the last rank's end
        gc.collect()
        gc.disable()
        tdist.barrier()
        start = time.perf_counter()
        loss = elbo.loss_and_grads(loop_model, empty_guide, local_sequences, local_lengths)
        tdist.barrier()
        times.append(time.perf_counter() - start)
        gc.enable()
    seconds = min(times)
    if rank == 0:
        with open(out_path, "w") as f:
            json.dump(
                {
                    "world": world,
                    "seconds_per_step": seconds,
                    "loss": loss,
                    "observed_steps": int(lengths.sum()),
                    "num_sequences": len(lengths),
                    "comm_bytes": elbo.last_comm_bytes,
                },
                f,
            )
    tdist.destroy_process_group()


def sharded(world, tile, steps):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        out_path = os.path.join(tmp, "result.json")
        mp.spawn(_shard_worker, args=(world, tile, steps, port, out_path), nprocs=world)
        with open(out_path) as f:
            return json.load(f)


if __name__ == "__main__":
    kind, rest = sys.argv[1], sys.argv[2:]
    if kind == "long":
        result = long_chain(rest[0], *map(int, rest[1:]))
    elif kind == "jit":
        result = jit_first_call()
    elif kind == "shard":
        result = sharded(*map(int, rest))
    else:
        raise SystemExit(f"unknown part {kind!r}: long, jit or shard")
    print(json.dumps(result))
