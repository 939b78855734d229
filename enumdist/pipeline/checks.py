"""Early, explicit checks of a composed config: each error names the config key and the fix."""

from __future__ import annotations

import os
from typing import Any

from omegaconf import DictConfig, OmegaConf

from enumdist.engine.errors import EnumdistError


class ConfigError(EnumdistError, ValueError):
    """A config value that cannot work; the message names the key."""


class Rule:
    """A config value's type and range: ``kind`` (``int`` or ``float``, ints accepted for floats),
    ``optional`` (null allowed), ``valid(value)`` and the words for what is expected."""

    def __init__(self, key: str, kind: type, valid, expected: str, optional: bool = False):
        self.key, self.kind, self.valid, self.expected, self.optional = (
            key,
            kind,
            valid,
            expected,
            optional,
        )

    def check(self, value: Any) -> str | None:
        """The problem with ``value`` in words, or ``None``."""
        if value is None:
            return None if self.optional else f"{self.key}=null: expected {self.expected}"
        kinds = (int, float) if self.kind is float else (int,)
        if isinstance(value, bool) or not isinstance(value, kinds):
            return (
                f"{self.key}={value!r} is a {type(value).__name__}, expected {self.kind.__name__}: "
                f"{self.expected}"
            )
        return None if self.valid(value) else f"{self.key}={value!r}: expected {self.expected}"


POSITIVE = lambda v: v > 0  # noqa: E731
VALUE_RULES = (
    Rule(
        "trainer.max_steps",
        int,
        lambda v: v > 0 or v == -1,
        "a positive number of optimiser steps (or -1: stop by trainer.max_epochs)",
    ),
    Rule(
        "trainer.max_epochs",
        int,
        lambda v: v > 0 or v == -1,
        "a positive number of epochs (or -1)",
        optional=True,
    ),
    Rule("trainer.num_nodes", int, POSITIVE, "a positive number of nodes"),
    Rule(
        "trainer.check_val_every_n_epoch",
        int,
        POSITIVE,
        "a positive number of epochs",
        optional=True,
    ),
    Rule("trainer.log_every_n_steps", int, POSITIVE, "a positive number of steps", optional=True),
    Rule(
        "trainer.process_group_timeout_s",
        float,
        POSITIVE,
        "a positive number of seconds",
        optional=True,
    ),
    Rule("optim.optimizer.lr", float, POSITIVE, "a positive learning rate"),
    Rule(
        "optim.gradient_clip_val",
        float,
        POSITIVE,
        "a positive gradient norm (or null: no clipping)",
        optional=True,
    ),
    Rule(
        "data.batch_size",
        int,
        POSITIVE,
        "a positive number of items per rank (or null: full batch)",
        optional=True,
    ),
    Rule(
        "data.eval_batch_size",
        int,
        POSITIVE,
        "a positive number of items (or null: full split)",
        optional=True,
    ),
    Rule(
        "data.max_items", int, POSITIVE, "a positive number of items (or null: all)", optional=True
    ),
    Rule(
        "callbacks.model_checkpoint.every_n_train_steps",
        int,
        POSITIVE,
        "a positive number of steps",
        optional=True,
    ),
    Rule(
        "callbacks.model_checkpoint.save_top_k",
        int,
        lambda v: v >= -1,
        "-1 (all), 0 or a positive number",
    ),
    Rule("callbacks.train_history.every_n_steps", int, POSITIVE, "a positive number of steps"),
)


def check_values(cfg: DictConfig, rules: tuple[Rule, ...] = VALUE_RULES) -> None:
    """Refuse, before anything runs, values that cannot work (every problem at once, each naming
    its key): mandatory values left ``???`` and the typed ranges of :data:`VALUE_RULES` (a key the
    config does not have is not checked)."""
    missing = missing_keys(cfg)
    problems = [
        f"{key} is missing (???): set {key}=<value>" + MISSING_HINTS.get(key, "") for key in missing
    ]
    for rule in rules:
        parent, _, leaf = rule.key.rpartition(".")
        node = OmegaConf.select(cfg, parent, default=None, throw_on_missing=False)
        if isinstance(node, DictConfig) and leaf in node and not OmegaConf.is_missing(node, leaf):
            problem = rule.check(OmegaConf.select(cfg, rule.key))
            if problem:
                problems.append(problem)
    if problems:
        raise ConfigError("invalid config: " + "; ".join(problems))


def missing_keys(node: Any, prefix: str = "") -> list[str]:
    """Dotted keys of every ``???`` value under ``node``, without resolving interpolations (which
    may need Hydra's runtime config, or fail later by their own name)."""
    from omegaconf import DictConfig, ListConfig

    found = []
    if isinstance(node, DictConfig):
        items = [(str(k), node._get_node(k)) for k in node]
    elif isinstance(node, ListConfig):
        items = [(str(i), node._get_node(i)) for i in range(len(node))]
    else:
        return found
    for key, child in items:
        path = f"{prefix}{key}"
        if child._is_missing() and not child._is_interpolation():
            found.append(path)
        elif isinstance(child, (DictConfig, ListConfig)):
            found += missing_keys(child, path + ".")
    return sorted(found)


MISSING_HINTS = {
    "data.load.path": " (data=saved reads <path>/train.pt, valid.pt and test.pt, each a torch.save'd "
    "dict of per-item tensors)",
}


def slurm_tasks_per_node(environ: dict[str, str] | None = None) -> int | None:
    """Tasks per node of the SLURM job step we run in, or ``None`` outside ``srun``/SLURM tasks."""
    environ = os.environ if environ is None else environ
    if "SLURM_NTASKS" not in environ or environ.get("SLURM_JOB_NAME") in ("bash", "interactive"):
        return None
    per_node = environ.get("SLURM_NTASKS_PER_NODE") or environ.get("SLURM_TASKS_PER_NODE")
    if per_node:
        return int(per_node.split("(")[0].split(",")[0])  # "2(x3)" -> 2
    return int(environ["SLURM_NTASKS"]) // int(
        environ.get("SLURM_NNODES", environ.get("SLURM_JOB_NUM_NODES", "1"))
    )


def check_slurm_devices(cfg: DictConfig, environ: dict[str, str] | None = None) -> None:
    """Lightning needs one SLURM task per device; say so before Lightning fails obscurely."""
    per_node = slurm_tasks_per_node(environ)
    if per_node is not None and per_node != int(cfg.trainer.devices):
        raise ConfigError(
            f"trainer.devices={cfg.trainer.devices} but this SLURM job runs {per_node} task(s) per node: "
            f"set trainer.devices={per_node} or submit with --ntasks-per-node={cfg.trainer.devices}"
        )


def check_decoding(cfg: DictConfig) -> None:
    if cfg.get("decode", {}).get("enabled", False):
        try:
            from enumdist.decoding import run_decoding  # noqa: F401
        except ImportError as error:
            raise ConfigError(
                "decode.enabled=true but enumdist.decoding.run_decoding is not available "
                f"({error}); run with decode.enabled=false"
            ) from error
        from hydra._internal.utils import _locate

        from enumdist.models.base import EnumModel

        model = _locate(cfg.model._target_)
        if isinstance(model, type) and issubclass(model, EnumModel) and not model.decodable:
            raise ConfigError(
                f"decode.enabled=true, but model._target_={cfg.model._target_} enumerates no "
                "sites, so the decoding stage does not apply: run with decode.enabled=false "
                f"(its MAP path: {model.__name__}.map_path)"
            )


def __getattr__(name: str) -> Any:
    """Old homes, kept importable: ``instantiate_group`` lives in :mod:`enumdist.pipeline.groups`,
    ``resolve_ckpt_path`` in :mod:`enumdist.pipeline.checkpoint_files` (imported lazily: both use
    :class:`ConfigError` from here)."""
    if name == "instantiate_group":
        from enumdist.pipeline.groups import instantiate_group

        return instantiate_group
    if name == "resolve_ckpt_path":
        from enumdist.pipeline.checkpoint_files import resolve_ckpt_path

        return resolve_ckpt_path
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
