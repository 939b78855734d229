"""Train a zoo model with an enumeration ELBO: ``python -m enumdist.train experiment=<name> [overrides]``.

:func:`train` reads top to bottom, one named step a line: checks, Pyro settings and seed ->
data, model, guide, elbo -> module -> loggers, callbacks -> trainer -> fit -> (requeue) -> test
-> (decode) -> report. Every config group is one ``hydra.utils.instantiate``.
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
    run_dir = prepare_run(cfg)
    datamodule, module = build_module(cfg)
    trainer, timeout_s = build_trainer(cfg, run_dir)
    metrics = fit(cfg, trainer, module, datamodule, timeout_s)
    requeue = requested_requeue(trainer)
    if requeue is not None:  # stopped for a requeue: no test/decode of the unfinished model
        finish(trainer)
        requeue.requeue(trainer)
        return metrics
    if cfg.test:
        metrics.update(run_test(trainer, module, datamodule, run_dir, timeout_s))
    if not trainer.is_global_zero:
        finish(trainer)
        return metrics
    pictures = decode_and_log_pictures(cfg, trainer, run_dir)
    finish(trainer)  # one wandb run per job, also in a sweep run by one process
    report(metrics, run_dir, pictures)
    return metrics


# Each step imports what it needs when it runs, so that config errors (unknown experiment, bad
# override) come back at once, before Lightning and the engine are imported.


def prepare_run(cfg: DictConfig) -> Path:
    """Check the config, save it, set Pyro's process-wide settings and seed; -> the run directory.

    Pyro's settings come before any zoo model is built: PyroModules read ``module_local_params``
    when they are constructed (processes started by ``ddp_spawn`` set them in
    ``EnumModule.setup``).
    """
    import pytorch_lightning as pl

    from enumdist.pipeline.checks import check_decoding, check_slurm_devices, check_values
    from enumdist.pipeline.console import filter_known_warnings
    from enumdist.pipeline.pyro_settings import apply_pyro_settings

    filter_known_warnings(cfg.get("filter_known_warnings", True))
    check_values(cfg)
    check_slurm_devices(cfg)
    check_decoding(cfg)
    run_dir = Path(cfg.paths.run_dir)
    save_config(cfg, run_dir)
    apply_pyro_settings(cfg.validate)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    return run_dir


def build_module(cfg: DictConfig):
    """(the DataModule, the :class:`~enumdist.pipeline.module.EnumModule` of model, guide, ELBO
    and optimiser), each config group one ``instantiate``, in this order (it draws random numbers)."""
    from hydra.utils import instantiate

    from enumdist.pipeline.checks import instantiate_group
    from enumdist.pipeline.module import EnumModule

    datamodule = instantiate_group(cfg, "data")
    model = instantiate_group(cfg, "model")
    guide = instantiate_group(cfg, "guide")  # a factory: model -> guide module
    elbo = instantiate_group(cfg, "elbo")  # a factory: built per process in EnumModule.setup
    scheduler = cfg.optim.get("scheduler")
    module = EnumModule(
        model,
        elbo=elbo,
        guide=guide,
        optimizer=instantiate(cfg.optim.optimizer, _convert_="all"),  # plain lists in checkpoints
        scheduler=instantiate(scheduler, _convert_="all") if scheduler else None,
        scheduler_interval=cfg.optim.scheduler_interval,
        validate=cfg.validate,
        fold_in=OmegaConf.to_container(cfg.fold_in) if cfg.get("fold_in") else None,
        hparams=OmegaConf.to_container(
            cfg, resolve=True
        ),  # plain containers: weights-only loadable
    )
    return datamodule, module


def build_trainer(cfg: DictConfig, run_dir: Path):
    """(the Lightning ``Trainer`` with the run's loggers, callbacks, checkpoint I/O and strategy,
    the process-group timeout in seconds)."""
    import pytorch_lightning as pl
    from hydra.utils import instantiate

    from enumdist.pipeline.checkpoint_files import AtomicCheckpointIO
    from enumdist.pipeline.loggers import build_loggers
    from enumdist.pipeline.slurm import slurm_plugins
    from enumdist.pipeline.strategies import lightning_strategy
    from enumdist.process_group import without_timeout

    loggers = build_loggers(cfg, run_dir)  # each gets the flattened config; wandb: see loggers.py
    callbacks = [instantiate(c) for c in cfg.get("callbacks", {}).values() if c]
    if not loggers:  # Lightning refuses a LearningRateMonitor without a logger
        callbacks = [c for c in callbacks if not isinstance(c, pl.callbacks.LearningRateMonitor)]
    # Lightning's in-handler SIGUSR1 requeue is off under SLURM: SlurmRequeue acts at a step boundary
    plugins = [AtomicCheckpointIO(), *slurm_plugins()]
    # the process-group timeout goes to the strategy
    trainer_cfg, timeout_s = without_timeout(cfg.trainer)
    trainer = instantiate(
        trainer_cfg,
        callbacks=callbacks,
        logger=loggers or False,
        plugins=plugins,
        strategy=lightning_strategy(trainer_cfg.strategy, timeout_s),
    )
    return trainer, timeout_s


def collectives(trainer, timeout_s: float | None):
    """A context in which a collective's timeout names ``trainer.process_group_timeout_s``, the
    ranks waited for, and stops the ranks Lightning launched."""
    from enumdist.pipeline.strategies import kill_launched_ranks
    from enumdist.process_group import naming_timeouts

    return naming_timeouts(
        timeout_s,
        trainer.global_rank,
        trainer.world_size,
        on_timeout=lambda: kill_launched_ranks(trainer),
    )


def fit(cfg: DictConfig, trainer, module, datamodule, timeout_s: float | None) -> dict[str, float]:
    """``trainer.fit``, resumed from ``cfg.ckpt_path`` (``last``: the newest intact checkpoint,
    after removing what a kill left behind); -> the metrics it ended with."""
    from enumdist.pipeline.checkpoint_files import tidy_run_dir
    from enumdist.pipeline.checks import resolve_ckpt_path

    run_dir = Path(cfg.paths.run_dir)
    ckpt_path = resolve_ckpt_path(cfg.ckpt_path, run_dir)
    if ckpt_path is not None and trainer.is_global_zero:  # a kill leaves temporaries and orphans
        tidy_run_dir(run_dir, cfg.get("callbacks", {}).get("model_checkpoint"), ckpt_path)
    with collectives(trainer, timeout_s):
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    return {k: float(v) for k, v in trainer.callback_metrics.items()}


def requested_requeue(trainer):
    """The :class:`~enumdist.pipeline.slurm.SlurmRequeue` callback that stopped training for a
    requeue, or ``None``."""
    from enumdist.pipeline.slurm import SlurmRequeue

    return next((c for c in trainer.callbacks if isinstance(c, SlurmRequeue) and c.requested), None)


def run_test(
    trainer, module, datamodule, run_dir: Path, timeout_s: float | None
) -> dict[str, float]:
    """``trainer.test`` of the trained weights, passed explicitly: under SLURM ``ckpt_path=None``
    would mean the newest ``hpc_ckpt_*.ckpt``; -> the test metrics."""
    from enumdist.pipeline.slurm import trained_checkpoint

    tested = trained_checkpoint(trainer, run_dir)
    with collectives(trainer, timeout_s):
        trainer.test(module, datamodule=datamodule, ckpt_path=tested, verbose=False)
    return {k: float(v) for k, v in trainer.callback_metrics.items()}


def decode_and_log_pictures(cfg: DictConfig, trainer, run_dir: Path) -> list[str]:
    """Rank 0: the decoding stage (``decode.enabled``), and the run's pictures (training curve,
    decoded pictures) sent to the loggers that take images (wandb); -> the pictures' paths."""
    pictures = sorted(str(p) for p in run_dir.glob("*.png"))
    if cfg.decode.enabled:
        from enumdist.decoding import run_decoding
        from enumdist.pipeline.loggers import log_decoded_outputs
        from enumdist.pipeline.targets import trust_config

        trust_config(cfg)  # the user's own config: its targets may be decoded in this process
        outputs = run_decoding(str(run_dir), cfg)  # {output name: path}
        pictures += sorted(str(p) for p in outputs.values() if str(p).endswith(".png"))
        log_decoded_outputs(trainer.loggers, outputs)
    for logger in trainer.loggers:
        if hasattr(logger, "log_image") and pictures:
            logger.log_image(key="pictures", images=pictures)
    return pictures


def finish(trainer) -> None:
    from enumdist.pipeline.loggers import finish_loggers

    finish_loggers(trainer.loggers)


def save_config(cfg: DictConfig, run_dir: Path) -> None:
    """``<run_dir>/.hydra/config.yaml`` as Hydra writes it, for runs composed without ``@hydra.main``."""
    from enumdist.atomic import atomic_write
    from enumdist.rank_zero import is_rank_zero

    path = run_dir / ".hydra" / "config.yaml"
    if not path.exists() and is_rank_zero():
        atomic_write(path, lambda f: f.write(OmegaConf.to_yaml(cfg).encode()))


def report(metrics: dict[str, float], run_dir: Path, pictures: list[str]) -> None:
    """Rank 0's closing words: ``<run_dir>/metrics.json``, then the held-out loss per observation
    and where the run's files are, on the console."""
    from enumdist.pipeline.slurm import write_metrics
    from enumdist.rank_zero import get_logger

    write_metrics(metrics, run_dir)
    log = get_logger(__name__)
    for key in ("train/loss_per_obs", "valid/loss_per_obs", "test/loss_per_obs", "test/accuracy"):
        if key in metrics:
            name = key.replace("/", " ").replace("_per_obs", " per observation")
            log.info(f"{name:<32} {metrics[key]:.5f}")
    log.info(f"run directory: {run_dir}")
    for name in (
        "checkpoints/last.ckpt",
        "train_history.csv",
        "metrics.json",
        "wandb",
        ".hydra/config.yaml",
    ):
        if (run_dir / name).exists():
            log.info(f"  {name:<22} {run_dir / name}")
    for picture in pictures:
        log.info(f"  picture                {picture}")


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def main(cfg: DictConfig) -> float | None:
    metrics = train(cfg)
    return metrics.get("test/loss_per_obs")


if __name__ == "__main__":
    main()
