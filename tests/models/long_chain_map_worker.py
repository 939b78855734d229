"""Runs in each spawned rank: LongChainHMM.map_path on this rank's time block."""

from __future__ import annotations

import os
import traceback
from datetime import timedelta

import torch
import torch._dynamo
import torch.distributed as tdist

from enumdist.data.long_chain import split_by_time, synthetic_long_chain
from enumdist.models.long_chain_hmm import GaussianLongChainHMM


def main(rank, world, port, outdir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    result = {}
    try:
        tdist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(60))
        _, y = synthetic_long_chain(3001, 3, num_sequences=2, seed=1)
        model = GaussianLongChainHMM(3, seed=0).double()
        result["block"] = model.map_path(split_by_time(y, rank, world))
    except Exception:
        result["error"] = traceback.format_exc()
    torch.save(result, os.path.join(outdir, f"rank{rank}.pt"))
    if tdist.is_initialized():
        tdist.destroy_process_group()
