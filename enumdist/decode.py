"""Decode a trained run: ``enumdist-decode run_dir=<dir> [split=test] [temperature=0|1]
[marginals=true] [decode_batch_size=32] [checkpoint=<path>] [pictures=false]``
(or ``python -m enumdist.decode ...``).

A Hydra app over the structured config :class:`DecodeConfig` (the fields of
:class:`enumdist.decoding.DecodeOptions` plus ``run_dir``), so ``--help`` lists the options,
a mistyped value or an unknown key is refused with its name, ``-m run_dir=a,b`` decodes several
runs, and ``hydra/launcher=submitit_slurm`` sends them to SLURM. Exits 0 on success.

Launched with several processes (``torchrun --nproc_per_node=N -m enumdist.decode ...``), every
rank decodes its own shard; torch.distributed is initialised with gloo (CPU) or nccl (CUDA).
"""

from __future__ import annotations

import dataclasses
import os
import typing
from pathlib import Path

import hydra
import torch
import torch.distributed as dist
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from enumdist.decoding import DecodeOptions, run_decoding
from enumdist.process_group import init_process_group
from enumdist.rank_zero import get_logger

log = get_logger(__name__)

CONFIG_DIR = str(Path(__file__).resolve().parent / "conf")


def _schema() -> type:
    """``DecodeConfig``: ``run_dir`` (required) and every field of :class:`DecodeOptions`, with its
    type and default -- generated, so that the options are declared in one place only."""
    hints = typing.get_type_hints(DecodeOptions)
    fields = [
        (f.name, hints[f.name], dataclasses.field(default=f.default))
        for f in dataclasses.fields(DecodeOptions)
    ]
    return dataclasses.make_dataclass(
        "DecodeConfig",
        [("run_dir", str, dataclasses.field(default=MISSING)), *fields],
        namespace={"__doc__": "Options of enumdist-decode (see DecodeOptions)."},
    )


DecodeConfig = _schema()
ConfigStore.instance().store(name="decode_schema", node=DecodeConfig)


def decode(cfg: DictConfig | dict) -> dict[str, Path]:
    """Decode ``cfg.run_dir`` with the other keys as :class:`DecodeOptions`; -> ``{output: path}``.

    Under ``torchrun`` (``WORLD_SIZE`` > 1) the process group is set up and torn down here.
    """
    options = (
        OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    )
    run_dir = options.pop("run_dir", MISSING)
    if run_dir in (None, MISSING, ""):
        raise ValueError(
            "run_dir=<training run directory> is required, e.g. enumdist-decode "
            "run_dir=outputs/chorale_hmm/<date>_<time>"
        )
    torch.set_num_threads(int(os.environ.get("ENUMDIST_NUM_THREADS", torch.get_num_threads())))
    started = False
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        init_process_group()  # the project's one way: no gloo SIGABRT at exit, a bounded timeout
        started = True
    try:
        outputs = run_decoding(run_dir, options)
    finally:
        if started:
            dist.destroy_process_group()
    for name, path in outputs.items():  # rank 0 only (the environment's RANK, torchrun's)
        log.info(f"{name}: {path}")
    return outputs


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="decode")
def main(cfg: DictConfig) -> None:
    decode(cfg)  # returns nothing: the console script's exit status is 0 on success


if __name__ == "__main__":
    main()
