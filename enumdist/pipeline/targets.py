"""Which ``_target_``s a run directory's saved config may name: the one allowlist.

A run directory is data and may come from someone else; its ``.hydra/config.yaml`` must not be able
to call ``torch.load``, ``os.system`` or anything else by naming it. Before anything of a saved
config is instantiated, :func:`check_config` walks the groups that will be instantiated (``model``,
``data``, ``guide``) and refuses any ``_target_`` that is not

- a class or function *defined in* one of :data:`PACKAGE_MODULES` (the package's models, data
  loaders, data modules and guides; checked on the resolved object, so an attribute path such as
  ``enumdist.models.torch.load`` does not pass), or
- registered explicitly: :func:`register` (Python) or the environment variable
  ``ENUMDIST_ALLOW_TARGETS`` (comma-separated dotted paths; for command lines).

The string is checked before it is resolved, so no module outside the package is ever imported
because a config names it. The train path registers the targets of the config it was *given* (its
own command line) with :func:`trust_config`, so that decoding a run in the process that trained it
accepts the user's own model.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Iterable, Iterator
from typing import Any

from omegaconf import DictConfig, ListConfig

from enumdist.engine.errors import EnumdistError

PACKAGE_MODULES = (
    "enumdist.models",
    "enumdist.data",
    "enumdist.pipeline.data",
    "enumdist.pipeline.streaming",  # data=synthetic_shards (experiment=hmm_1m)
    "enumdist.pipeline.guides",
    "enumdist.pipeline.time_split",
)
INSTANTIATED_GROUPS = ("model", "data", "guide")
ALLOW_ENV = "ENUMDIST_ALLOW_TARGETS"

_registered: set[str] = set()


class UntrustedTargetError(EnumdistError, ValueError):
    """A saved config names a ``_target_`` outside the allowlist; names the key and the fix."""


def register(*targets: str | Any) -> None:
    """Allow these targets (dotted paths, or the classes/functions themselves) in saved configs."""
    for target in targets:
        _registered.add(
            target if isinstance(target, str) else f"{target.__module__}.{target.__qualname__}"
        )


def registered() -> frozenset[str]:
    return frozenset(_registered)


def environment_targets() -> set[str]:
    return {t.strip() for t in os.environ.get(ALLOW_ENV, "").split(",") if t.strip()}


def _in_package(module: str) -> bool:
    return any(module == m or module.startswith(m + ".") for m in PACKAGE_MODULES)


def is_allowed(target: str) -> bool:
    """Registered, or a class/function defined in the package's allowed modules."""
    if target in _registered or target in environment_targets():
        return True
    if not isinstance(target, str) or not _in_package(target.rsplit(".", 1)[0]):
        return False  # never resolve (import) a path outside the package
    from hydra._internal.utils import _locate

    try:
        obj = _locate(target)
    except Exception:  # an unresolvable target is simply not allowed
        return False
    return (inspect.isclass(obj) or inspect.isfunction(obj)) and _in_package(
        getattr(obj, "__module__", "")
    )


def targets_in(node: Any, key: str) -> Iterator[tuple[str, Any]]:
    """``(config key, _target_ value)`` of every node under ``node`` (``key`` is its own key)."""
    if isinstance(node, DictConfig):
        if "_target_" in node:
            yield f"{key}._target_", node._get_node("_target_")._value()
        for child in node:
            if child != "_target_":
                yield from targets_in(node._get_node(child), f"{key}.{child}")
    elif isinstance(node, ListConfig):
        for i in range(len(node)):
            yield from targets_in(node._get_node(i), f"{key}[{i}]")


def check_config(cfg: DictConfig, source: str, groups: Iterable[str] = INSTANTIATED_GROUPS) -> None:
    """Raise :class:`UntrustedTargetError` (before any call) if ``cfg``'s ``groups`` name a target
    outside the allowlist; ``source`` (the file) is named in the message."""
    refused = [
        (key, target)
        for group in groups
        if group in cfg
        for key, target in targets_in(cfg._get_node(group), group)
        if not is_allowed(target)
    ]
    if refused:
        listed = ", ".join(f"{key}={target!r}" for key, target in refused)
        raise UntrustedTargetError(
            f"{source} names target(s) outside enumdist's allowlist: {listed}. A run directory's "
            "config may only instantiate the package's models, data and guides. If you trust this "
            "run directory, allow them explicitly: "
            f"{ALLOW_ENV}="
            + ",".join(str(t) for _, t in refused)
            + " in the environment, or enumdist.pipeline.targets.register(...) in Python"
        )


def trust_config(cfg: DictConfig, groups: Iterable[str] = INSTANTIATED_GROUPS) -> None:
    """Register every target of ``cfg``'s ``groups``: for a config the user composed themselves."""
    register(
        *(
            target
            for group in groups
            if group in cfg
            for _, target in targets_in(cfg._get_node(group), group)
            if isinstance(target, str)
        )
    )
