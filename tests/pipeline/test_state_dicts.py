"""One state-dict compatibility check, one error, for resuming training and for decoding."""

from pathlib import Path

import pytest
import torch

import enumdist.models
from enumdist.decoding.checkpoint import load_weights
from enumdist.pipeline.checks import ConfigError
from enumdist.pipeline.state_dicts import (
    SHOWN_KEYS,
    CheckpointMismatchError,
    check_state_dict,
)


def test_the_message_names_missing_unexpected_and_mis_shaped_keys_and_the_fix():
    expected = {"a": torch.zeros(2), "b": torch.zeros(3, 4), "c": torch.zeros(1)}
    saved = {"b": torch.zeros(4, 3), "c": torch.ones(1), "z": torch.zeros(1)}
    with pytest.raises(CheckpointMismatchError) as raised:
        check_state_dict(expected, saved, subject="ckpt_path: another model", fix="Do X.")
    assert str(raised.value) == (
        "ckpt_path: another model: missing keys ['a'], unexpected keys ['z'], "
        "different shapes ['b: checkpoint (4, 3) vs model (3, 4)']. Do X."
    )
    assert isinstance(raised.value, ConfigError) and isinstance(raised.value, ValueError)
    fitting = {k: torch.ones_like(v) for k, v in expected.items()}
    check_state_dict(expected, fitting, subject="unused", fix="unused")  # values may differ


def test_long_lists_are_cut_with_a_count():
    expected = {f"k{i:02d}": torch.zeros(1) for i in range(SHOWN_KEYS + 3)}
    with pytest.raises(
        CheckpointMismatchError, match=r"k09'\] \(and 3 more\), unexpected keys \[\]"
    ):
        check_state_dict(expected, {}, subject="s", fix="f")


def hmm_module(hidden_dim, target="enumdist.models.HMM"):
    from enumdist.pipeline.module import EnumModule

    model = enumdist.models.HMM(num_keys=5, hidden_dim=hidden_dim, seed=0)
    hparams = {"model": {"_target_": target}}
    return EnumModule(model, elbo=None, optimizer=None, hparams=hparams)


def test_resume_and_decoding_refuse_another_models_weights_with_the_same_error():
    trained = hmm_module(hidden_dim=3)
    checkpoint = {"state_dict": trained.state_dict(), "hyper_parameters": trained.hparams}
    hmm_module(hidden_dim=3).on_load_checkpoint(checkpoint)  # the same model: accepted
    reshaped = (
        r"different shapes \['model.emission_unconstrained: checkpoint \(3, 5\) vs model \(4, 5\)"
    )
    with pytest.raises(
        CheckpointMismatchError,
        match=r"^ckpt_path: the checkpoint is from a different model: missing keys \[\], "
        rf"unexpected keys \[\], {reshaped}",
    ):
        hmm_module(hidden_dim=4).on_load_checkpoint(checkpoint)
    with pytest.raises(CheckpointMismatchError, match="holds model._target_='enumdist.models.HMM'"):
        hmm_module(hidden_dim=3, target="enumdist.models.FactorialHMM").on_load_checkpoint(
            checkpoint
        )
    model = enumdist.models.HMM(num_keys=5, hidden_dim=4, seed=0)
    weights = {k.removeprefix("model."): v for k, v in checkpoint["state_dict"].items()}
    with pytest.raises(
        CheckpointMismatchError,
        match=r"^checkpoint last.ckpt is not from this model HMM: missing keys \[\], unexpected "
        r"keys \[\], different shapes \['emission_unconstrained: checkpoint \(3, 5\) vs model",
    ):
        load_weights(model, weights, what="model HMM", source=Path("last.ckpt"))
