"""Does a checkpoint's ``state_dict`` fit a model? One check, one error, for resuming training
(:meth:`enumdist.pipeline.module.EnumModule.on_load_checkpoint`) and for decoding
(:func:`enumdist.decoding.checkpoint.load_weights`).

``torch.nn.Module.load_state_dict`` would refuse a mismatch too, but with a ``RuntimeError`` that
names neither the checkpoint nor what to do; a resumed run would fail deep inside Lightning.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from enumdist.pipeline.checks import ConfigError

#: at most this many keys of each kind are named in the message
SHOWN_KEYS = 10


class CheckpointMismatchError(ConfigError):
    """A checkpoint whose parameters do not fit the model the run's config builds (another model,
    other sizes); the message names the missing, unexpected and mis-shaped keys and the fix."""


def check_state_dict(
    expected: Mapping[str, torch.Tensor],
    saved: Mapping[str, torch.Tensor],
    *,
    subject: str,
    fix: str,
) -> None:
    """Raise :class:`CheckpointMismatchError` unless ``saved`` has exactly ``expected``'s keys
    with the same shapes.

    The message reads ``"<subject>: missing keys [...], unexpected keys [...], different shapes
    [...]. <fix>"``: ``subject`` says which checkpoint and which model, ``fix`` what to do.
    """
    missing = sorted(set(expected) - set(saved))
    unexpected = sorted(set(saved) - set(expected))
    reshaped = [
        f"{key}: checkpoint {tuple(saved[key].shape)} vs model {tuple(value.shape)}"
        for key, value in sorted(expected.items())
        if key in saved and tuple(saved[key].shape) != tuple(value.shape)
    ]
    if missing or unexpected or reshaped:
        raise CheckpointMismatchError(
            f"{subject}: missing keys {_shown(missing)}, unexpected keys {_shown(unexpected)}, "
            f"different shapes {_shown(reshaped)}. {fix}"
        )


def _shown(keys: list[str]) -> str:
    more = len(keys) - SHOWN_KEYS
    return f"{keys[:SHOWN_KEYS]}" + (f" (and {more} more)" if more > 0 else "")
