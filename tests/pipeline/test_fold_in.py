"""Per-item guide latents: autoguides pair them with the batch's own items, and held-out items
get their own, fitted with the model frozen (fold-in), checked against Pyro's ELBO."""

from __future__ import annotations

import pyro
import pytest
import torch
from pyro import poutine
from torch.distributions import transform_to
from torch.distributions.constraints import simplex

import enumdist
from enumdist.models import TopicModel
from enumdist.pipeline.fold_in import check_fold_in, fold_in
from enumdist.pipeline.guides import auto

pyro.settings.set(module_local_params=True)


def documents(num_docs: int, seed: int, vocab: int = 12, length: int = 7) -> dict:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, length + 1, (num_docs,), generator=g)
    words = torch.randint(vocab, (num_docs, length), generator=g)
    words = words * (torch.arange(length) < lengths[:, None])
    return {
        "documents": words,
        "lengths": lengths,
        "index": torch.arange(num_docs),
        "num_total": num_docs,
    }


def test_autoguide_latents_follow_the_batch_index_not_a_random_subsample():
    model = TopicModel(vocab_size=12, num_topics=3)
    full = documents(10, seed=0)
    guide = auto(model, "AutoDelta")
    guide(full)
    weights = torch.eye(3)[torch.arange(10) % 3].unsqueeze(1) * 0.9 + 0.1 / 3  # item i: topic i % 3
    with torch.no_grad():
        guide.auto.document_topics_unconstrained.copy_(transform_to(simplex).inv(weights))
    index = torch.tensor([7, 2, 5])
    minibatch = {k: v[index] for k, v in full.items() if k in ("documents", "lengths")}
    minibatch.update(index=index, num_total=10)
    for _ in range(3):  # a random subsample would differ between calls
        value = poutine.trace(guide).get_trace(minibatch).nodes["document_topics"]["value"]
        assert value.squeeze(1).argmax(-1).tolist() == (index % 3).tolist()


def test_fold_in_fits_held_out_items_with_the_model_frozen_and_pyro_agrees():
    model = TopicModel(vocab_size=12, num_topics=3, seed=1)
    trained = auto(model, "AutoDelta")
    assert check_fold_in(model, trained, documents(10, seed=0)) == ["document_topics"]
    held_out = documents(4, seed=5)  # another split: 4 documents, not the 10 the guide has
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    elbo = enumdist.EnumELBO(max_plate_nesting=2)
    factory = lambda m: auto(m, "AutoDelta")  # noqa: E731
    start = fold_in(model, factory, elbo, held_out, steps=1, lr=1e-9)
    fitted = fold_in(model, factory, elbo, held_out, steps=40, lr=0.05)
    assert elbo.loss(model.model, fitted, held_out) < elbo.loss(model.model, start, held_out) - 0.5
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    oracle = pyro.infer.TraceEnum_ELBO(max_plate_nesting=2)
    with torch.no_grad():
        ours, pyros = (
            elbo.loss(model.model, fitted, held_out),
            oracle.loss(model.model, fitted, held_out),
        )
    assert ours == pytest.approx(pyros, rel=1e-5)
    again = fold_in(model, factory, elbo, held_out, steps=40, lr=0.05)  # deterministic
    assert elbo.loss(model.model, again, held_out) == pytest.approx(
        elbo.loss(model.model, fitted, held_out)
    )


def test_a_guide_with_per_item_and_global_latents_is_refused_by_name():
    import pyro.distributions as dist

    from enumdist.models import EnumModel

    class Both(EnumModel):
        global_latents = ("noise", "offset")

        def model(self, batch):
            scale = pyro.sample("noise", dist.LogNormal(0.0, 1.0))
            with pyro.plate("data", batch["num_total"], subsample=batch["index"]):
                pyro.sample("offset", dist.Normal(0.0, scale))

    model = Both()
    batch = {"index": torch.arange(3), "num_total": 3}
    with pytest.raises(
        ValueError, match=r"\['offset'\] are per item of plate 'data' and \['noise'\] are global"
    ):
        check_fold_in(model, auto(model, "AutoDelta"), batch)
