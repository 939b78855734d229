"""Sharded training is exact: k steps on 2 processes (ddp_spawn, gloo) leave the parameters of
single-process SVI with ``pyro.infer.TraceEnum_ELBO`` on the same (full or global mini-) batches.

The oracle is SVI's step written out (``TraceEnum_ELBO.differentiable_loss``, backward, Adam):
``pyro.infer.SVI`` itself only updates parameters it finds in the global param store, and the
pipeline keeps PyroModule parameters local to the modules (``module_local_params``).

Both sides optimise the same function: the ELBO loss divided by the training split's number of
observations (the pipeline's objective; the oracle scales model and guide by the same constant).
Plain Adam, no clipping, float64.
"""

from __future__ import annotations

import pyro
import pytest
import torch
from hydra.utils import instantiate
from pyro.infer import TraceEnum_ELBO

from enumdist.pipeline.data import ShardSampler
from tests.pipeline.conftest import compose_config

STEPS = 4


def sharded_run(run_dir, *overrides):
    from enumdist.train import train

    cfg = compose_config(
        "trainer=ddp_cpu",
        "trainer.strategy=ddp_spawn",
        "trainer.precision=64-true",
        "optim=adam",
        "optim.gradient_clip_val=null",
        f"trainer.max_steps={STEPS}",
        "trainer.check_val_every_n_epoch=1000",
        "logger=none",
        "callbacks=with_rank_params",
        "callbacks.progress_bar.refresh_rate=0",
        "test=false",
        *overrides,
        run_dir=run_dir,
    )
    train(cfg)
    return cfg, [
        torch.load(run_dir / "final_params" / f"rank{r}.pt", weights_only=True) for r in (0, 1)
    ]


def svi_oracle(cfg):
    """``STEPS`` SVI steps on one process over the global batches the ranks shared."""
    pyro.clear_param_store()
    model = instantiate(cfg.model).double()
    guide = instantiate(cfg.guide)(model)
    datamodule = instantiate(cfg.data)
    full = datamodule.full_batch("train")
    with torch.no_grad(), torch.random.fork_rng(devices=[]):  # as EnumModule.setup creates them
        torch.manual_seed(cfg.seed)
        guide(full)
    guide.double()
    full = {
        k: v.double() if torch.is_tensor(v) and v.is_floating_point() else v
        for k, v in full.items()
    }
    scale = 1.0 / model.num_observations(full)
    elbo = TraceEnum_ELBO(max_plate_nesting=model.max_plate_nesting)
    optimizer = None

    def svi_step(batch):
        nonlocal optimizer
        loss = elbo.differentiable_loss(model.model, guide, batch) * scale
        if optimizer is None:  # after the first call, when lazy guide parameters exist
            optim = cfg.optim.optimizer
            optimizer = torch.optim.Adam(
                [*model.parameters(), *guide.parameters()], lr=optim.lr, betas=tuple(optim.betas)
            )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    batch_size = cfg.data.batch_size
    sampler = ShardSampler(
        full["num_total"],
        0,
        1,
        None if batch_size is None else 2 * batch_size,
        shuffle=cfg.data.shuffle,
        seed=cfg.data.seed,
    )
    step, epoch = 0, 0
    while step < STEPS:
        sampler.set_epoch(epoch)
        for indices in sampler:
            if step == STEPS:
                break
            index = torch.tensor(indices)
            batch = {k: v[index] if torch.is_tensor(v) else v for k, v in full.items()}
            batch["index"] = index
            svi_step(batch)
            step += 1
        epoch += 1
    return {
        **{f"model.{k}": v.detach() for k, v in model.state_dict().items()},
        **{f"guide.{k}": v.detach() for k, v in guide.state_dict().items()},
    }


@pytest.mark.slow
@pytest.mark.parametrize(
    "experiment, overrides",
    [
        ("toy_hmm", []),  # full batch, 12 sequences of different lengths
        ("toy_hmm", ["data.batch_size=3"]),  # global minibatches of 6 split 3 + 3
        ("regime_mixture", []),  # a global enumerated variable outside the plate
        (
            "regime_mixture",
            [
                "data=toy_points",
                "data.load._target_=tests.pipeline.toy.toy_points_2d",
                "model=gaussian_mixture",
                "guide=auto_delta",
            ],
        ),  # lazily created guide params
    ],
    ids=["hmm-full", "hmm-minibatch", "global-enumerated", "autoguide"],
)
def test_two_process_training_equals_single_process_svi(tmp_path, experiment, overrides):
    cfg, (rank0, rank1) = sharded_run(tmp_path, f"experiment={experiment}", "elbo=enum", *overrides)
    assert rank0["step"] == rank1["step"] == STEPS
    expected = svi_oracle(cfg)
    assert set(rank0["state_dict"]) == set(expected)
    initial = {f"model.{k}": v for k, v in instantiate(cfg.model).double().state_dict().items()}
    for key, value in expected.items():
        assert key not in initial or not torch.allclose(value, initial[key]), f"{key} did not move"
        torch.testing.assert_close(
            rank0["state_dict"][key], rank1["state_dict"][key], rtol=0, atol=0
        )
        torch.testing.assert_close(
            rank0["state_dict"][key],
            value,
            rtol=1e-5,
            atol=1e-8,
            msg=lambda m, key=key: f"{key}: {m}",
        )
