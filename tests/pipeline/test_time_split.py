"""Training one long chain split by time across ranks (``experiment=long_chain``): the first
step's loss and gradients on 2 DDP ranks (ddp_spawn, gloo, float64) equal the single-process
full-chain ones, and each rank's batch is its time block."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate

import enumdist
from enumdist.data.long_chain import time_block
from tests.pipeline.conftest import compose_config

SMALL = [
    "experiment=long_chain",
    "data.load.steps=3000",
    "data.load.num_states=3",
    "data.load.dtype=float64",
    "logger=none",
    "test=false",
    "callbacks.progress_bar.refresh_rate=0",
]


def test_each_rank_gets_its_block_and_the_blocks_make_the_chain():
    cfg = compose_config(*SMALL)
    datamodule = instantiate(cfg.data)
    whole = datamodule.full_batch("train")
    assert whole["num_total"] == 1 and whole["observations"].shape == (1, 3000)
    blocks = [datamodule.block("train", r, 3) for r in range(3)]
    for r, block in enumerate(blocks):
        assert block["index"].tolist() == [r] and block["num_total"] == 3
        expected = whole["observations"][:, time_block(3000, r, 3)]
        assert torch.equal(block["observations"], expected)
    assert sum(b["observations"].shape[1] for b in blocks) == 3000


def test_a_block_on_the_wrong_rank_is_refused():
    cfg = compose_config(*SMALL)
    model = instantiate(cfg.model)
    block = instantiate(cfg.data).block("train", 1, 2)
    with pytest.raises(ValueError, match="block \\[1\\] of 2"):
        model.model(block)


def one_process_first_step(cfg):
    """The oracle: the pipeline's objective on the whole chain, one process, no DDP."""
    model = instantiate(cfg.model).double()
    full = instantiate(cfg.data).full_batch("train")
    elbo = enumdist.EnumELBO(max_plate_nesting=model.max_plate_nesting)
    loss = elbo.differentiable_loss(model.model, lambda batch: None, full)
    loss = loss / model.num_observations(full)
    loss.backward()
    return float(loss), {f"model.{k}": p.grad for k, p in model.named_parameters()}


@pytest.mark.slow
def test_two_rank_first_step_equals_the_one_process_full_chain(tmp_path):
    from enumdist.train import train

    cfg = compose_config(
        *SMALL,
        "trainer=ddp_cpu",
        "trainer.strategy=ddp_spawn",
        "trainer.precision=64-true",
        "trainer.max_steps=1",
        "trainer.check_val_every_n_epoch=1000",
        "optim.gradient_clip_val=null",
        "+callbacks.first_step._target_=tests.pipeline.first_step.RecordFirstStep",
        f"+callbacks.first_step.path={tmp_path / 'first_step'}",
        run_dir=tmp_path,
    )
    train(cfg)
    ranks = [torch.load(tmp_path / "first_step" / f"rank{r}.pt") for r in (0, 1)]
    loss, grads = one_process_first_step(cfg)
    assert set(ranks[0]["grads"]) == set(grads)
    for record in ranks:
        assert record["loss"] == pytest.approx(loss, rel=1e-9)
        for name, grad in grads.items():
            assert grad.abs().max() > 0, name  # every parameter takes part
            torch.testing.assert_close(record["grads"][name], grad, rtol=1e-9, atol=1e-12)


def test_decoding_a_long_chain_run_is_refused_before_training():
    from enumdist.pipeline.checks import ConfigError, check_decoding

    with pytest.raises(ConfigError, match="decode.enabled=false"):
        check_decoding(compose_config(*SMALL, "decode.enabled=true"))
