"""Pyro's process-wide settings for the pipeline: applied by a call, never on import.

PyroModules read ``module_local_params`` when they are *constructed*: with it, their parameters
live on the modules, never in Pyro's global param store, so checkpoints, optimisers and DDP see
all of them, and a module rebuilt in the same process (a resumed run, a decoded run, a held-out
split's fold-in guide) never picks up another one's parameters from that store. So the setting
must be on before the first zoo model or guide is built: the training entry point applies
:func:`apply_pyro_settings` before it builds the model, ``EnumModule.setup`` again in every
process (those started by ``ddp_spawn`` or submitit do not inherit settings), and the decoding
stage :func:`use_module_local_params` before it rebuilds a trained run's model.
"""

from __future__ import annotations

import pyro


def use_module_local_params() -> None:
    """PyroModules built from now on keep their parameters on the module (idempotent)."""
    pyro.settings.set(module_local_params=True)


def apply_pyro_settings(validate: bool) -> None:
    """Everything a training process needs (idempotent): module-local parameters,
    ``pyro.enable_validation(validate)`` and an empty global param store."""
    use_module_local_params()
    pyro.enable_validation(validate)
    pyro.clear_param_store()
