"""Wrap an ordinary Pyro model function ``def model(batch)`` as an :class:`EnumModel`, no class
to write: ``FunctionModel(model, shard_plate="data")``.

The function follows the pipeline's batch layout (:mod:`enumdist.models.base`): its data plate is
``pyro.plate(shard_plate, batch["num_total"], subsample=batch["index"])``. Its ``pyro.param``
statements become parameters of this module (``params.<name>``, unconstrained), created on the
first call, so that Lightning, optimisers, DDP and checkpoints see them; Pyro's global param
store is never touched. Latents that are neither enumerated nor observed are named in
``global_latents`` and covered by the configured autoguide (``guide=auto_delta`` / ``auto_normal``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

import torch
from pyro import poutine
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample
from torch.distributions import constraints, transform_to

from enumdist.models.base import EnumModel


def resolve_function(function: Callable | str) -> Callable:
    """A callable, or its import path ``"package.module.function"`` / ``"package.module:function"``
    (so that a YAML config can name it)."""
    if callable(function):
        return function
    module, _, name = function.replace(":", ".").rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as error:
        raise ValueError(
            f"model.function={function!r}: cannot import {name!r} from {module!r} "
            f"({error}); is its package on PYTHONPATH?"
        ) from error


class _ModuleParams(Messenger):
    """Serves ``pyro.param(name, init, constraint=...)`` from ``owner.params`` (creating the
    unconstrained parameter from ``init`` on first use) instead of the global param store."""

    def __init__(self, owner: FunctionModel):
        super().__init__()
        self.owner = owner

    def _pyro_param(self, msg: dict) -> None:
        name = msg["name"]
        constraint = msg["kwargs"].get("constraint") or constraints.real
        key = name.replace(".", "__")
        if key not in self.owner.params:
            init = msg["args"][1] if len(msg["args"]) > 1 else None
            if init is None:
                raise ValueError(
                    f"pyro.param({name!r}) in {self.owner.function_name} has no initial "
                    "value on its first call; give it one"
                )
            init = init() if callable(init) else init
            unconstrained = transform_to(constraint).inv(torch.as_tensor(init).detach())
            self.owner.params[key] = torch.nn.Parameter(unconstrained.clone())
        msg["value"] = transform_to(constraint)(self.owner.params[key])
        msg["done"] = True


class FunctionModel(EnumModel):
    """An :class:`EnumModel` around ``function(batch)``.

    Args:
        function: the Pyro model, or its import path (``"my_package.models.mixture"``).
        shard_plate: the name of its data plate.
        max_plate_nesting: how many plates it nests.
        num_observations: ``fn(batch) -> int`` observed values per batch (for the loss per
            observation); default the batch's items.
        global_latents: its latents that are neither enumerated nor observed, which the
            configured autoguide covers; a latent missing here is refused on the first call.
    """

    def __init__(
        self,
        function: Callable | str,
        shard_plate: str = "data",
        max_plate_nesting: int = 1,
        num_observations: Callable | str | None = None,
        global_latents: list[str] | None = None,
    ):
        super().__init__()
        self.function = resolve_function(function)
        self.function_name = getattr(self.function, "__qualname__", repr(self.function))
        self.shard_plate, self.max_plate_nesting = shard_plate, max_plate_nesting
        self._count = resolve_function(num_observations) if num_observations else None
        self.global_latents = tuple(global_latents or ())
        self.params = torch.nn.ParameterDict()
        self._checked = False

    def model(self, batch: dict) -> None:
        if not self._checked:
            self._checked = True  # before tracing: check_latents calls this method
            try:
                self.check_latents(batch)
            except BaseException:
                self._checked = False
                raise
        with _ModuleParams(self):
            return self.function(batch)

    def num_observations(self, batch: dict) -> int:
        return int(self._count(batch)) if self._count else len(batch["index"])

    def check_latents(self, batch: dict) -> None:
        """Every latent must be enumerated or covered by the guide (``global_latents``): a latent
        that is neither would be drawn from its prior inside the model, a noisy loss instead of
        an exact one."""
        with poutine.block(), torch.no_grad():
            trace = poutine.trace(self.model).get_trace(batch)
        uncovered = [
            name
            for name, site in trace.nodes.items()
            if site["type"] == "sample"
            and not site["is_observed"]
            and site["infer"].get("enumerate") is None
            and not site_is_subsample(site)
            and name not in self.global_latents
        ]
        if uncovered:
            raise ValueError(
                f"{self.function_name}: sites {uncovered} are neither enumerated nor "
                f"observed; list them in FunctionModel(global_latents=[...]) so that the "
                "autoguide (guide=auto_delta / auto_normal) covers them"
            )

    def guide_model(self, batch: dict) -> None:
        return poutine.block(self.model, expose=list(self.global_latents))(batch)

    def create_parameters(self, weights: dict[str, torch.Tensor]) -> None:
        """Make room for saved parameters (``{"params.<name>": tensor}``) before the first call
        created them: the decoding stage calls this before loading a checkpoint."""
        for key, value in weights.items():
            name = key.removeprefix("params.")
            if key.startswith("params.") and name not in self.params:
                self.params[name] = torch.nn.Parameter(torch.empty_like(value))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        self.create_parameters(
            {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
        )
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
