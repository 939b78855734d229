"""Rebuild a trained run: its composed config, the zoo model and guide, and their weights.

Checkpoints are read with ``torch.load(weights_only=True)``: tensors and plain containers only,
never arbitrary pickled objects, after their bytes are checked against the checksum sidecar.
The saved config may only instantiate allowlisted targets (:mod:`enumdist.pipeline.targets`).
The LightningModule stores the zoo model's parameters under ``model.`` and the guide's under
``guide.``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pyro import poutine

from enumdist.models.base import EnumModel
from enumdist.pipeline import targets
from enumdist.pipeline.checkpoint_files import load_checkpoint
from enumdist.pipeline.pyro_settings import use_module_local_params
from enumdist.pipeline.state_dicts import CheckpointMismatchError, check_state_dict


def load_run_config(run_dir: str | Path) -> DictConfig:
    """The run's composed config, refused (before anything is instantiated) if its model, data
    or guide names a ``_target_`` outside :mod:`enumdist.pipeline.targets`' allowlist."""
    path = Path(run_dir) / ".hydra" / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: run_dir={run_dir} is not a training run "
            "directory (expected the composed Hydra config there)"
        )
    cfg = OmegaConf.load(path)
    targets.check_config(cfg, source=str(path))
    return cfg


def find_checkpoint(run_dir: str | Path, checkpoint: str | Path | None = None) -> Path:
    path = Path(checkpoint) if checkpoint else Path(run_dir) / "checkpoints" / "last.ckpt"
    if not path.is_file():
        raise FileNotFoundError(
            f"no checkpoint at {path}: train the run first, or pass checkpoint=<path to a .ckpt>"
        )
    return path


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The checkpoint's ``state_dict``, its bytes verified against the checksum sidecar training
    wrote (a corrupt file is refused by name) and loaded weights-only."""
    checkpoint = load_checkpoint(path, map_location="cpu")
    if "state_dict" not in checkpoint:
        raise ValueError(f"{path} holds no 'state_dict' (not a Lightning checkpoint)")
    return checkpoint["state_dict"]


def select_prefix(state_dict: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}


def load_weights(
    module: torch.nn.Module, weights: dict[str, torch.Tensor], *, what: str, source: Path
) -> None:
    """``module.load_state_dict(weights)``, refused (:func:`~enumdist.pipeline.state_dicts.
    check_state_dict`) with a message naming every key that does not fit."""
    check_state_dict(
        module.state_dict(),
        weights,
        subject=f"checkpoint {source} is not from this {what}",
        fix="Decode with the run's own checkpoint, or fix the model config to the one it was "
        "trained with.",
    )
    module.load_state_dict(weights)


def build_model(cfg: DictConfig, state_dict: dict[str, torch.Tensor], source: Path) -> EnumModel:
    """The run's zoo model with its trained weights. As in training, PyroModules built from here on
    hold their own parameters: a second guide built in this process (a held-out split's fold-in)
    never finds the first one's in Pyro's global param store."""
    use_module_local_params()
    model = instantiate(cfg.model)
    if not isinstance(model, EnumModel):
        raise TypeError(f"model._target_={cfg.model.get('_target_')} is not an EnumModel")
    model.create_parameters(
        select_prefix(state_dict, "model.")
    )  # made on the first call (FunctionModel)
    load_weights(
        model,
        select_prefix(state_dict, "model."),
        what=f"model {cfg.model.get('_target_', type(model).__name__)}",
        source=source,
    )
    return model.eval()


def build_guide(
    cfg: DictConfig,
    model: EnumModel,
    batch: dict,
    state_dict: dict[str, torch.Tensor],
    source: Path,
):
    """The run's guide with its trained weights, or ``None`` when it has no latents to cover.

    Autoguides create their parameters on their first call, so the guide runs once on ``batch``
    (any batch of the decoded split) before its weights are loaded.
    """
    weights = select_prefix(state_dict, "guide.")
    if "guide" not in cfg or cfg.guide is None:
        if weights:
            raise CheckpointMismatchError(
                f"{source} holds guide weights but the config has no guide"
            )
        return None
    guide = instantiate(cfg.guide)(model)
    with torch.no_grad():
        first_run = poutine.trace(guide).get_trace(batch)
    load_weights(guide, weights, what=f"guide {cfg.guide.get('_target_')}", source=source)
    samples_latents = any(site["type"] == "sample" for site in first_run.nodes.values())
    return guide.eval() if samples_latents else None
