"""Instantiate one config group (``model``, ``data``, ``guide``, ``elbo``) with an error that
names the group and its ``_target_``."""

from __future__ import annotations

from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig

from enumdist.pipeline.checks import ConfigError


def instantiate_group(cfg: DictConfig, key: str, **kwargs) -> Any:
    """``hydra.utils.instantiate(cfg[key])`` with an error that names ``key`` and its ``_target_``."""
    node = cfg.get(key)
    if node is None or "_target_" not in node:
        raise ConfigError(
            f"{key}: no config with a _target_ (choose one of enumdist/conf/{key}/*.yaml)"
        )
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as error:
        raise ConfigError(
            f"{key}: cannot instantiate {key}._target_={node._target_!r}: {error}"
        ) from error
