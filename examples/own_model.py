"""Your own Pyro model, trained by enumdist's pipeline and decoded, in about 30 lines.
The model contract is in docs/own_model.md; `python examples/own_model.py` runs it (CPU, ~seconds)."""

import pyro
import pyro.distributions as dist
import pytorch_lightning as pl
import torch
from pyro.nn import PyroParam
from torch.distributions import constraints

import enumdist
from enumdist.decoding import decode_batch
from enumdist.models import EnumModel
from enumdist.pipeline.data import ShardedDataModule
from enumdist.pipeline.module import EnumModule


class TwoClusters(EnumModel):
    shard_plate, max_plate_nesting = "data", 1  # the data plate; how many plates nest

    def __init__(self):
        super().__init__()
        self.weights = PyroParam(torch.ones(2) / 2, constraints.simplex)
        self.locs = PyroParam(torch.tensor([-1.0, 1.0]))

    def model(self, batch):  # batch: your tensors + "index" (the items) + "num_total" (split size)
        with pyro.plate("data", batch["num_total"], subsample=batch["index"]):
            z = pyro.sample("z", dist.Categorical(self.weights), infer={"enumerate": "parallel"})
            pyro.sample("x", dist.Normal(self.locs[z], 1.0), obs=batch["x"])

    def num_observations(self, batch):
        return len(batch["x"])


def load(split):  # any dict of per-item tensors, one per split
    g = torch.Generator().manual_seed(["train", "valid", "test"].index(split))
    return {"x": torch.cat([torch.randn(60, generator=g) - 3, torch.randn(40, generator=g) + 3])}


model, data = TwoClusters(), ShardedDataModule(load, batch_size=50)
module = EnumModule(model, elbo=enumdist.EnumELBO, optimizer=lambda p: torch.optim.Adam(p, lr=0.05))
trainer = pl.Trainer(
    max_steps=200,
    logger=False,
    enable_checkpointing=False,
    enable_progress_bar=False,
    use_distributed_sampler=False,
    enable_model_summary=False,
)
trainer.fit(module, datamodule=data)
test_loss = trainer.test(module, datamodule=data, verbose=False)[0]["test/loss_per_obs"]
decoded = decode_batch(model, None, data.full_batch("test"), marginals=True)  # MAP clusters
print(
    f"test loss per point {test_loss:.3f}; locs {model.locs.tolist()}; z {decoded['z'][:5, 0].tolist()}"
)
