"""Train a zoo model with an enumeration ELBO: ``python -m enumdist.train experiment=<name> [overrides]``.

Reads top to bottom: seed -> data -> model -> guide -> elbo -> module -> callbacks -> loggers ->
trainer -> fit -> test -> (decode). Every config group is one ``hydra.utils.instantiate``.
The run directory holds ``.hydra/config.yaml``, ``checkpoints/last.ckpt``, ``train_history.csv``
(+ ``.png``), ``wandb/`` and, with ``decode.enabled=true``, the decoding stage's outputs.
"""

from __future__ import annotations

import os

os.environ.setdefault("WANDB_MODE", "offline")  # never talk to the network unless asked to

from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

CONFIG_DIR = str(Path(__file__).resolve().parent / "conf")


def train(cfg: DictConfig) -> dict[str, float]:
    """Run one experiment from a composed config; returns the test metrics (rank 0 prints them)."""
    # imported here so that config errors (unknown experiment, bad override) come back at once
    import pytorch_lightning as pl
    from hydra.utils import instantiate

    from enumdist.pipeline.checkpoint_files import AtomicCheckpointIO, tidy_run_dir
    from enumdist.pipeline.checks import (
        check_decoding,
        check_slurm_devices,
        check_values,
        instantiate_group,
        resolve_ckpt_path,
    )
    from enumdist.pipeline.console import filter_known_warnings
    from enumdist.pipeline.loggers import build_loggers, finish_loggers, log_decoded_outputs
    from enumdist.pipeline.module import EnumModule
    from enumdist.pipeline.slurm import (
        SlurmRequeue,
        slurm_plugins,
        trained_checkpoint,
        write_metrics,
    )
    from enumdist.pipeline.strategies import kill_launched_ranks, lightning_strategy
    from enumdist.process_group import naming_timeouts, without_timeout

    filter_known_warnings(cfg.get("filter_known_warnings", True))

    check_values(cfg)
    check_slurm_devices(cfg)
    check_decoding(cfg)
    run_dir = Path(cfg.paths.run_dir)
    save_config(cfg, run_dir)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)

    datamodule = instantiate_group(cfg, "data")
    model = instantiate_group(cfg, "model")
    guide = instantiate_group(cfg, "guide")  # a factory: model -> guide module
    elbo = instantiate_group(cfg, "elbo")  # a factory: built per process in EnumModule.setup
    module = EnumModule(
        model,
        elbo=elbo,
        guide=guide,
        optimizer=instantiate(cfg.optim.optimizer, _convert_="all"),  # plain lists in checkpoints
        scheduler=instantiate(cfg.optim.scheduler, _convert_="all")
        if cfg.optim.get("scheduler")
        else None,
        scheduler_interval=cfg.optim.scheduler_interval,
        validate=cfg.validate,
        fold_in=OmegaConf.to_container(cfg.fold_in) if cfg.get("fold_in") else None,
        hparams=OmegaConf.to_container(
            cfg, resolve=True
        ),  # plain containers: weights-only loadable
    )

    loggers = build_loggers(cfg, run_dir)  # each gets the flattened config; wandb: see loggers.py
    callbacks = [instantiate(c) for c in cfg.get("callbacks", {}).values() if c]
    if not loggers:  # Lightning refuses a LearningRateMonitor without a logger
        callbacks = [c for c in callbacks if not isinstance(c, pl.callbacks.LearningRateMonitor)]
    # Lightning's in-handler SIGUSR1 requeue is off under SLURM: SlurmRequeue acts at a step boundary
    plugins = [AtomicCheckpointIO(), *slurm_plugins()]
    trainer_cfg, timeout_s = without_timeout(
        cfg.trainer
    )  # the process-group timeout goes to the strategy
    trainer = instantiate(
        trainer_cfg,
        callbacks=callbacks,
        logger=loggers or False,
        plugins=plugins,
        strategy=lightning_strategy(trainer_cfg.strategy, timeout_s),
    )

    def collectives():
        return naming_timeouts(
            timeout_s,
            trainer.global_rank,
            trainer.world_size,
            on_timeout=lambda: kill_launched_ranks(trainer),
        )

    ckpt_path = resolve_ckpt_path(cfg.ckpt_path, run_dir)
    if ckpt_path is not None and trainer.is_global_zero:  # a kill leaves temporaries and orphans
        tidy_run_dir(run_dir, cfg.get("callbacks", {}).get("model_checkpoint"), ckpt_path)
    with collectives():
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    requeue = next((c for c in callbacks if isinstance(c, SlurmRequeue) and c.requested), None)
    if requeue is not None:  # stopped for a requeue: no test/decode of the unfinished model
        finish_loggers(trainer.loggers)
        requeue.requeue(trainer)
        return metrics
    if (
        cfg.test
    ):  # the trained weights, explicitly: under SLURM ckpt_path=None means hpc_ckpt_*.ckpt
        tested = trained_checkpoint(trainer, run_dir)
        with collectives():
            trainer.test(module, datamodule=datamodule, ckpt_path=tested, verbose=False)
        metrics.update({k: float(v) for k, v in trainer.callback_metrics.items()})

    if not trainer.is_global_zero:
        finish_loggers(trainer.loggers)
        return metrics
    pictures = sorted(str(p) for p in run_dir.glob("*.png"))
    if cfg.decode.enabled:
        from enumdist.decoding import run_decoding
        from enumdist.pipeline.targets import trust_config

        trust_config(cfg)  # the user's own config: its targets may be decoded in this process
        outputs = run_decoding(str(run_dir), cfg)  # {output name: path}
        pictures += sorted(str(p) for p in outputs.values() if str(p).endswith(".png"))
        log_decoded_outputs(trainer.loggers, outputs)
    for logger in trainer.loggers:  # wandb: the training curve and the decoding stage's pictures
        if hasattr(logger, "log_image") and pictures:
            logger.log_image(key="pictures", images=pictures)
    finish_loggers(trainer.loggers)  # one wandb run per job, also in a sweep run by one process
    write_metrics(metrics, run_dir)
    report(metrics, run_dir, pictures)
    return metrics


def save_config(cfg: DictConfig, run_dir: Path) -> None:
    """``<run_dir>/.hydra/config.yaml`` as Hydra writes it, for runs composed without ``@hydra.main``."""
    path = run_dir / ".hydra" / "config.yaml"
    if not path.exists() and int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", 0))) == 0:
        from enumdist.pipeline.checkpoint_files import atomic_write

        atomic_write(path, lambda f: f.write(OmegaConf.to_yaml(cfg).encode()))


def report(metrics: dict[str, float], run_dir: Path, pictures: list[str]) -> None:
    """Rank 0's closing words: held-out loss per observation and where the run's files are."""
    for key in ("train/loss_per_obs", "valid/loss_per_obs", "test/loss_per_obs", "test/accuracy"):
        if key in metrics:
            print(
                f"{key.replace('/', ' ').replace('_per_obs', ' per observation'):<32} {metrics[key]:.5f}"
            )
    print(f"run directory: {run_dir}")
    for name in (
        "checkpoints/last.ckpt",
        "train_history.csv",
        "metrics.json",
        "wandb",
        ".hydra/config.yaml",
    ):
        if (run_dir / name).exists():
            print(f"  {name:<22} {run_dir / name}")
    for picture in pictures:
        print(f"  picture                {picture}")


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def main(cfg: DictConfig) -> float | None:
    metrics = train(cfg)
    return metrics.get("test/loss_per_obs")


if __name__ == "__main__":
    main()
