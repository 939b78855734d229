"""Tiny synthetic (model, guide, batch) cases for every model of ``enumdist.models``, shared by
the model tests (``tests/models``); the engine's own cases are in the package above."""

from __future__ import annotations

import torch
from pyro.infer.autoguide import AutoDelta

from enumdist import models
from enumdist.models import hmm
from tests.engine.zoo import empty_guide

#: every HMM a user can pick (exported by ``enumdist.models``) defined in
#: ``enumdist/models/hmm.py``, in the order of the file; shared bases such as TwoChainHMM are not
HMM_CLASSES = [
    c
    for c in vars(hmm).values()
    if isinstance(c, type)
    and issubclass(c, models.EnumModel)
    and c.__module__ == hmm.__name__
    and getattr(models, c.__name__, None) is c
]


def _as_batch(fields: dict) -> dict:
    """``fields`` plus what a zoo model's batch also carries: item ``index`` and ``num_total``."""
    n = next(iter(fields.values())).shape[0]
    return dict(fields, index=torch.arange(n), num_total=n)


def piano_roll_batch(num_sequences=4, num_steps=6, num_keys=5, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(2, num_steps + 1, (num_sequences,), generator=g)
    lengths[0] = num_steps
    # two "chords" alternate so that a hidden state helps
    chords = (torch.rand(2, num_keys, generator=g) < 0.5).to(dtype)
    which = torch.arange(num_steps) % 2
    sequences = chords[which].expand(num_sequences, num_steps, num_keys).clone()
    noise = torch.rand(sequences.shape, generator=g) < 0.1
    sequences = (sequences != noise.to(dtype)).to(dtype)
    sequences[torch.arange(num_steps) >= lengths.unsqueeze(-1)] = 0
    return _as_batch({"sequences": sequences, "lengths": lengths})


def mixture_batch(num_points=12, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    centers = torch.tensor([[-3.0, 0.0], [3.0, 0.0], [0.0, 3.0]], dtype=dtype)
    features = centers[torch.arange(num_points) % 3] + 0.5 * torch.randn(
        num_points, 2, generator=g, dtype=dtype
    )
    return _as_batch({"features": features})


def topic_batch(num_documents=4, max_words=7, vocab_size=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, max_words + 1, (num_documents,), generator=g)
    words = torch.randint(0, vocab_size, (num_documents, max_words), generator=g)
    words[torch.arange(max_words) >= lengths.unsqueeze(-1)] = 0
    return _as_batch({"documents": words, "lengths": lengths})


def classifier_batch(num_points=12, seed=0, dtype=torch.float32):
    batch = mixture_batch(num_points, seed, dtype)
    labels = torch.arange(num_points) % 3
    labels[num_points // 3 :] = -1  # two thirds unlabeled
    batch.update(labels=labels, is_labeled=labels >= 0)
    return batch


def make_case(name: str, dtype=torch.float32):
    """-> (model, guide, batch); the guide has been run once so its parameters exist."""
    if name in {c.__name__ for c in HMM_CLASSES}:
        cls = getattr(models, name)
        model = cls(num_keys=5, hidden_dim=3, seed=1, prior_strength=0.1)
        batch, guide = piano_roll_batch(dtype=dtype), empty_guide
    elif name == "GaussianMixture":
        model = models.GaussianMixture(num_features=2, num_components=3)
        batch = mixture_batch(dtype=dtype)
        guide = AutoDelta(model.guide_model, init_loc_fn=model.init_loc_fn)
    elif name == "TopicModel":
        model = models.TopicModel(vocab_size=12, num_topics=3)
        batch = topic_batch()
        guide = AutoDelta(model.guide_model, init_loc_fn=model.init_loc_fn)
    elif name == "SemiSupervisedClassifier":
        model = models.SemiSupervisedClassifier(num_features=2, num_classes=3)
        batch, guide = classifier_batch(dtype=dtype), empty_guide
    else:
        raise KeyError(name)
    model = model.to(dtype)
    if guide is not empty_guide:
        guide(batch)
        guide = guide.to(dtype)
    return model, guide, batch


CASE_NAMES = [c.__name__ for c in HMM_CLASSES] + [
    "GaussianMixture",
    "TopicModel",
    "SemiSupervisedClassifier",
]


def parameters_of(model, guide):
    params = list(model.parameters())
    if isinstance(guide, torch.nn.Module):
        params += list(guide.parameters())
    return params
