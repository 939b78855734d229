"""Decode a trained run: ``python -m enumdist.decode run_dir=<dir> [split=test] [temperature=0|1]
[marginals=true] [decode_batch_size=32] [checkpoint=<path>] [pictures=false]``.

Launched with several processes (``torchrun --nproc_per_node=N -m enumdist.decode ...``), every
rank decodes its own shard; torch.distributed is initialised with gloo (CPU) or nccl (CUDA).
"""

from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist
from omegaconf import OmegaConf

from enumdist.decoding import run_decoding
from enumdist.process_group import init_process_group


def parse(argv: list[str]) -> tuple[str, dict]:
    bad = [a for a in argv if "=" not in a]
    if bad:
        raise SystemExit(f"arguments must be key=value, got {bad}; e.g. run_dir=outputs/train/...")
    options = OmegaConf.to_container(OmegaConf.from_dotlist(argv))
    run_dir = options.pop("run_dir", None)
    if not run_dir:
        raise SystemExit("run_dir=<training run directory> is required")
    return str(run_dir), options


def main(argv: list[str] | None = None) -> dict:
    run_dir, options = parse(sys.argv[1:] if argv is None else argv)
    torch.set_num_threads(int(os.environ.get("ENUMDIST_NUM_THREADS", torch.get_num_threads())))
    started, rank = False, 0
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        init_process_group()  # the project's one way: no gloo SIGABRT at exit, a bounded timeout
        started, rank = True, dist.get_rank()
    try:
        outputs = run_decoding(run_dir, options)
    finally:
        if started:
            dist.destroy_process_group()
    if rank == 0:
        for name, path in outputs.items():
            print(f"{name}: {path}")
    return outputs


if __name__ == "__main__":
    main()
