"""Decoding a held-out split of a model whose guide has per-item latents (the topic model's
per-document weights): the split's own latents are folded in first, then decoded."""

from __future__ import annotations

import functools
from pathlib import Path

import pyarrow.parquet as pq
import pyro
import pyro.distributions as dist
import pytest
import torch
from decoding_run_dirs import TOPIC_DATA, TOPIC_FOLD_IN, make_topic_run_dir
from omegaconf import OmegaConf
from pyro import poutine

import enumdist
from enumdist.data import load_python_docs
from enumdist.decoding import run_decoding
from enumdist.decoding.held_out import decoding_guide
from enumdist.models import EnumModel
from enumdist.pipeline.fold_in import fold_in
from enumdist.pipeline.guides import auto

pyro.settings.set(module_local_params=True)


def split_batch(split: str) -> tuple[dict, list[str]]:
    corpus = load_python_docs(split, **TOPIC_DATA)
    n = len(corpus.lengths)
    batch = {
        "documents": corpus.documents,
        "lengths": corpus.lengths,
        "index": torch.arange(n),
        "num_total": n,
    }
    return batch, list(corpus.names)


def pyro_topics(model, guide, batch) -> list[list[int]]:
    """Pyro's own ``infer_discrete`` (MAP) of each word's topic, the guide's latents replayed."""
    replayed = poutine.replay(model.model, trace=poutine.trace(guide).get_trace(batch))
    decoded = pyro.infer.infer_discrete(replayed, first_available_dim=-3, temperature=0)
    topics = poutine.trace(decoded).get_trace(batch).nodes["topic"]["value"]
    return [row[: int(n)].tolist() for row, n in zip(topics, batch["lengths"])]


def test_a_held_out_split_is_decoded_with_its_own_folded_in_topic_weights(tmp_path):
    run_dir, model = make_topic_run_dir(tmp_path)
    options = {"split": "test", "decode_batch_size": 3, "pictures": False, "progress": False}
    outputs = run_decoding(run_dir, options)
    rows = pq.read_table(outputs["decoded"]).to_pylist()

    batch, names = split_batch("test")
    assert len(rows) == len(names) > 3  # several decode batches share the one folded-in guide
    assert [r["name"] for r in rows] == names
    folded = fold_in(
        model,
        functools.partial(auto, kind="AutoDelta"),
        enumdist.EnumELBO(max_plate_nesting=2),
        batch,
        **TOPIC_FOLD_IN,
    )
    expected = pyro_topics(model, folded, batch)
    assert [r["topic"] for r in rows] == expected
    # the fitted weights matter: with the prior mean (uniform weights) every document would
    # give a word its most likely topic overall
    overall = model.topic_words.detach().argmax(0)
    uniform = [
        overall[batch["documents"][i, : int(n)]].tolist() for i, n in enumerate(batch["lengths"])
    ]
    assert expected != uniform


class LocalAndGlobal(EnumModel):
    """Per-item latent ``offset``, global latent ``noise``: a fresh guide would drop ``noise``."""

    global_latents = ("noise", "offset")

    def model(self, batch):
        scale = pyro.sample("noise", dist.LogNormal(0.0, 1.0))
        with pyro.plate("data", batch["num_total"], subsample=batch["index"]):
            offset = pyro.sample("offset", dist.Normal(0.0, scale))
            pyro.sample("obs", dist.Normal(offset, 1.0), obs=batch["values"])


class OwnLocalGuide(EnumModel):
    """Its own guide samples a per-item latent from the model's parameters: nothing to fold in."""

    def __init__(self):
        super().__init__()
        self.loc = torch.nn.Parameter(torch.zeros(()))

    def model(self, batch):
        with pyro.plate("data", batch["num_total"], subsample=batch["index"]):
            offset = pyro.sample("offset", dist.Normal(0.0, 1.0))
            pyro.sample("obs", dist.Normal(offset, 1.0), obs=batch["values"])

    def guide(self, batch):
        with pyro.plate("data", batch["num_total"], subsample=batch["index"]):
            pyro.sample("offset", dist.Normal(self.loc, 1.0))


@pytest.mark.parametrize(
    "model_cls, message",
    [
        (LocalAndGlobal, r"\['offset'\] are per item of plate 'data' and \['noise'\] are global"),
        (OwnLocalGuide, r"ModelGuide has no parameters of its own"),
    ],
)
def test_held_out_decoding_is_refused_where_fold_in_is_impossible(model_cls, message):
    model = model_cls()
    # a run config without a fold_in group (the defaults apply)
    cfg = OmegaConf.create(
        {"guide": {"_target_": "enumdist.pipeline.guides.auto", "_partial_": True}}
    )
    batch = {"values": torch.randn(4), "index": torch.arange(4), "num_total": 4}

    def items_of(items: range) -> dict:
        return {k: v[items.start : items.stop] if k != "num_total" else v for k, v in batch.items()}

    trained = auto(model)
    trained(batch)
    weights = {f"guide.{k}": v for k, v in trained.state_dict().items()}
    args = (cfg, model, items_of, 4, weights, Path("last.ckpt"))
    with pytest.raises(ValueError, match=message) as error:
        decoding_guide(*args, "test")
    assert "decode split='test': the guide's latents ['offset'], per item of plate 'data'" in str(
        error.value
    )
    assert "Or decode split=train" in str(error.value)
    assert decoding_guide(*args, "train") is not None  # the trained guide, as before
