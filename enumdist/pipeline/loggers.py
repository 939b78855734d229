"""The run's loggers, built from ``cfg.logger`` (one entry per logger), and their end.

Every logger receives the composed config, flattened (``optim.optimizer.lr``), as its
hyper-parameters: wandb shows it as the run's config, the CSV logger writes ``hparams.yaml``,
TensorBoard and MLflow their params. wandb gets more (:func:`wandb_options`):

- mode: ``logger.wandb.offline`` true/false if set, else ``WANDB_MODE``, else offline;
  ``WANDB_MODE=disabled`` always wins (nothing written);
- run name = the experiment's name; ``group`` = one per sweep (multirun), so a dashboard groups
  a sweep's jobs; ``tags`` from the config;
- the run id is kept in ``<run_dir>/wandb/run-id``: a requeued or resumed job (same run
  directory) continues the same wandb run (``resume="allow"``) on the same step axis
  (``trainer/global_step``);
- ``log_model`` (checkpoints as artifacts) and ``log_decoded`` (the decoding stage's Parquet
  files as an artifact) act online only; offline they are dropped with a note (wandb offline
  runs keep checkpoints in the run directory), never refused;
- ``best_metrics`` (``{key: min|max}``) adds the best value to the run summary next to the last.

Each job finishes its wandb run (:func:`finish_loggers`): a sweep in one process gives one
wandb run per job. ``best_metrics`` and ``log_decoded`` are options of :class:`WandbLogger` here,
not of wandb.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import Logger
from pytorch_lightning.loggers import WandbLogger as LightningWandbLogger

from enumdist.atomic import atomic_write
from enumdist.pipeline.checks import ConfigError
from enumdist.rank_zero import get_logger, is_rank_zero

log = get_logger(__name__)

RUN_ID_FILE = "run-id"  # under <run_dir>/wandb/
ONLINE_MODES = {
    "online": "online",
    "run": "online",
    "offline": "offline",
    "dryrun": "offline",
    "disabled": "disabled",
}
INSTALL_HINT = {"wandb": "wandb", "tensorboard": "tensorboardX", "mlflow": "mlflow-skinny"}


def flat_config(cfg: DictConfig | Mapping, separator: str = ".") -> dict[str, Any]:
    """The resolved config without ``hydra``, as ``{"optim.optimizer.lr": 0.01, ...}``."""
    container = (
        OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    )
    container.pop("hydra", None)
    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, Mapping) and value:
            for key, item in value.items():
                walk(f"{prefix}{separator}{key}" if prefix else str(key), item)
        else:
            flat[prefix] = value

    walk("", container)
    return flat


def wandb_mode(offline: bool | None, environ: Mapping[str, str] | None = None) -> str:
    """``"online"``, ``"offline"`` or ``"disabled"``: see the module docstring for the order."""
    environ = os.environ if environ is None else environ
    from_env = environ.get("WANDB_MODE", "").strip().lower()
    if from_env and from_env not in ONLINE_MODES:
        raise ConfigError(f"WANDB_MODE={from_env!r}: expected one of {sorted(ONLINE_MODES)}")
    if ONLINE_MODES.get(from_env) == "disabled":
        return "disabled"
    if offline is not None:
        return "offline" if offline else "online"
    return ONLINE_MODES.get(from_env, "offline")


def hydra_job(cfg: DictConfig) -> dict[str, Any]:
    """Experiment name, multirun flag and sweep directory of the running Hydra job (or of
    ``cfg.hydra`` when composed with ``return_hydra_config``); neutral values outside Hydra."""
    from hydra.core.hydra_config import HydraConfig

    node = cfg.get("hydra") if isinstance(cfg, DictConfig) else None
    if node is None and HydraConfig.initialized():
        node = HydraConfig.get()
    if node is None:
        return {"experiment": None, "multirun": False, "sweep_dir": None}
    choices = node.runtime.get("choices", {}) if node.get("runtime") else {}
    return {
        "experiment": choices.get("experiment") or node.job.get("name"),
        "multirun": str(node.get("mode")) in ("RunMode.MULTIRUN", "MULTIRUN"),
        "sweep_dir": node.sweep.dir if node.get("sweep") else None,
    }


def persistent_run_id(run_dir: str | os.PathLike, rank_zero: bool = True) -> str:
    """The wandb run id of this run directory: read from ``<run_dir>/wandb/run-id``, or made and
    written there (by rank 0) on the first start, so that a requeued job resumes the same run."""
    path = Path(run_dir) / "wandb" / RUN_ID_FILE
    if path.is_file() and path.read_text().strip():
        return path.read_text().strip()
    run_id = uuid.uuid4().hex[:12]
    if rank_zero:
        atomic_write(path, lambda f: f.write(run_id.encode()))
    return run_id


def wandb_options(
    node: Mapping[str, Any],
    run_dir: str | os.PathLike,
    job: Mapping[str, Any],
    environ: Mapping[str, str] | None = None,
    rank_zero: bool = True,
) -> dict[str, Any]:
    """The keyword arguments for :class:`WandbLogger` from the ``logger.wandb`` config."""
    options = dict(node)
    mode = wandb_mode(options.pop("offline", None), environ)
    options["mode"] = mode
    options["offline"] = (
        False  # the mode is passed explicitly; Lightning's flag would rewrite WANDB_MODE
    )
    if not options.get("name"):
        options["name"] = job.get("experiment") or "train"
    if not options.get("group") and job.get("multirun") and job.get("sweep_dir"):
        sweep = Path(str(job["sweep_dir"]))
        options["group"] = f"{options['name']}/{sweep.name}"
    options["tags"] = [str(t) for t in (options.get("tags") or []) if t is not None]
    if not options.get("id"):
        options["id"] = persistent_run_id(run_dir, rank_zero)
    options["resume"] = "allow"
    if options.get("log_model") and mode != "online":
        log.info(
            f"logger.wandb.log_model={options['log_model']} needs an online run (wandb is "
            f"{mode}); checkpoints stay in {run_dir}/checkpoints"
        )
        options["log_model"] = False
    return options


class WandbLogger(LightningWandbLogger):
    """Lightning's WandbLogger plus what a job needs: best-value summaries, an artifact of the
    decoded outputs, and an explicit end. It does not pass wandb's deprecated ``anonymous``
    setting (Lightning always passes it, and wandb then warns on every run)."""

    def __init__(
        self,
        *args,
        best_metrics: Mapping[str, str] | None = None,
        log_decoded: bool = True,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        if self._wandb_init.get("anonymous") is None:
            self._wandb_init.pop("anonymous", None)
        self.best_metrics = dict(best_metrics or {})
        self.log_decoded = bool(log_decoded) and self._wandb_init.get("mode") == "online"
        for key, goal in self.best_metrics.items():
            if goal not in ("min", "max"):
                raise ConfigError(f"logger.wandb.best_metrics.{key}={goal!r}: expected min or max")

    @property
    def experiment(self):
        fresh = self._experiment is None
        run = super().experiment
        if fresh and hasattr(run, "define_metric"):
            for key, goal in self.best_metrics.items():  # summary keeps the best and the last value
                run.define_metric(key, summary=f"{goal},last")
        return run

    def log_outputs(self, paths: list[str | os.PathLike], name: str = "decoded") -> None:
        """One artifact ``<name>-<run id>`` holding ``paths`` (the decoding stage's Parquet files)."""
        import wandb

        files = [Path(p) for p in paths if Path(p).is_file()]
        if not files or self._experiment is None:
            return
        artifact = wandb.Artifact(f"{name}-{self._experiment.id}", type=name)
        for path in files:
            artifact.add_file(str(path))
        self._experiment.log_artifact(artifact)

    def finish(self) -> bool:
        """End this job's wandb run; the next job in the process starts its own. True if one was open."""
        open_run = self._experiment is not None and hasattr(self._experiment, "finish")
        if open_run:
            self._experiment.finish()
        self._experiment = None
        return open_run


def _is_wandb(target: str) -> bool:
    return target.rsplit(".", 1)[-1] == "WandbLogger"


def build_loggers(
    cfg: DictConfig,
    run_dir: str | os.PathLike | None = None,
    environ: Mapping[str, str] | None = None,
) -> list[Logger]:
    """Instantiate ``cfg.logger.*`` and give each the flattened config as hyper-parameters."""
    run_dir = Path(run_dir if run_dir is not None else cfg.paths.run_dir)
    rank_zero = is_rank_zero()
    job = hydra_job(cfg)
    hyper_parameters = flat_config(cfg)
    loggers: list[Logger] = []
    for key, node in (cfg.get("logger") or {}).items():
        if not node:
            continue
        node = OmegaConf.to_container(node, resolve=True)
        target = node.get("_target_", "")
        if _is_wandb(target):
            node = {
                "_target_": f"{__name__}.WandbLogger",
                **wandb_options(
                    {k: v for k, v in node.items() if k != "_target_"},
                    run_dir,
                    job,
                    environ,
                    rank_zero,
                ),
            }
            if node["mode"] == "disabled":
                continue
        if "mlflow" in target.lower() and str(node.get("tracking_uri", "")).startswith("file:"):
            # MLflow 3 keeps its file store (what `logger=mlflow` uses: offline, in the run
            # directory) behind an opt-in; a user's own setting wins.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        try:
            logger = instantiate(node)
        except Exception as error:
            missing = next(
                (m for k, m in INSTALL_HINT.items() if k in key or k in target.lower()), None
            )
            if isinstance(error.__cause__, ModuleNotFoundError) or "ModuleNotFoundError" in str(
                error
            ):
                raise ConfigError(
                    f"logger.{key}: {target} needs a package that is not installed "
                    f"(pip install {missing or '<its package>'}, or enumdist[{key}]); "
                    "or choose another logger, e.g. logger=csv"
                ) from error
            raise ConfigError(f"logger.{key}: cannot instantiate {target}: {error}") from error
        logger.log_hyperparams(hyper_parameters)
        loggers.append(logger)
    return loggers


def log_decoded_outputs(loggers: list[Logger], outputs: Mapping[str, Any]) -> None:
    """Hand the decoding stage's Parquet files to each wandb logger that logs them (online)."""
    tables = [p for p in outputs.values() if str(p).endswith(".parquet")]
    for logger in loggers:
        if isinstance(logger, WandbLogger) and logger.log_decoded:
            logger.log_outputs(tables)


def finish_loggers(loggers: list[Logger]) -> None:
    """Save what each logger buffers and end the job's wandb run.

    ``run.finish()`` returns before wandb's service process has written the run's file;
    ``wandb.teardown()`` waits for it. Without it, a job that is requeued (and killed) right
    after, or a reader of the file, can find it empty.
    """
    finished = False
    for logger in loggers:
        logger.save()
        if isinstance(logger, WandbLogger):
            finished = logger.finish() or finished
    if finished:
        import wandb

        wandb.teardown()
