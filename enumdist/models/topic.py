"""A topic model with one enumerated topic per word (LDA-like, collapsed over nothing).

``batch``: ``documents`` long ``[B, L]`` word ids zero-padded after ``lengths`` long ``[B]``
``index`` ``[B]``, ``num_total``.

Plates: ``documents`` (shard plate, dim -2) contains ``words`` (dim -1). Each document has topic
weights ``document_topics ~ Dirichlet(alpha)``, a local latent for an ``AutoDelta`` /
``AutoNormal`` guide (subsampled along with the documents); each word's ``topic`` is enumerated,
so the guide never sees it. The topics' word distributions are a global learnable parameter
(simplex-constrained ``PyroParam``, seeded init), fit by maximum likelihood.
Padded words are masked; their enumerated topic sums to one, so padding changes nothing.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer.autoguide.initialization import init_to_mean
from pyro.nn import PyroParam
from torch.distributions import constraints

from enumdist.models.base import EnumModel
from enumdist.models.hmm_base import seeded


class TopicModel(EnumModel):
    shard_plate = "documents"
    max_plate_nesting = 2
    global_latents = ("document_topics",)

    def __init__(self, vocab_size: int, num_topics: int = 8, alpha: float = 0.5, seed: int = 0):
        super().__init__()
        self.vocab_size = vocab_size
        self.num_topics = num_topics
        self.alpha = alpha
        with seeded(seed):
            noise = torch.rand(num_topics, vocab_size) + 0.5
        self.topic_words = PyroParam(noise / noise.sum(-1, keepdim=True), constraints.simplex)

    def num_observations(self, batch):
        return int(batch["lengths"].sum())

    def state_sites(self, batch):
        return {"topic": ["topic"]}

    def init_loc_fn(self, site):
        """Reproducible guide init: the prior mean (uniform topic weights)."""
        return init_to_mean(site)

    def guide_model(self, batch):
        return poutine.block(self.model, expose=list(self.global_latents))(batch)

    def model(self, batch):
        words, lengths = batch["documents"], batch["lengths"]
        if words.dim() != 2:
            raise ValueError(
                f"TopicModel: batch['documents'] must be [B, L], got {tuple(words.shape)}"
            )
        if words.numel() and int(words.max()) >= self.vocab_size:
            raise ValueError(
                f"TopicModel: word id {int(words.max())} >= vocab_size="
                f"{self.vocab_size}; set model.vocab_size to the corpus' vocabulary"
            )
        topic_words = self.topic_words
        alpha = topic_words.new_full((self.num_topics,), self.alpha)
        positions = torch.arange(words.shape[1], device=words.device)
        with pyro.plate(self.shard_plate, batch["num_total"], subsample=batch["index"], dim=-2):
            document_topics = pyro.sample("document_topics", dist.Dirichlet(alpha))
            with (
                pyro.plate("words", words.shape[1], dim=-1),
                poutine.mask(mask=positions < lengths.unsqueeze(-1)),
            ):
                topic = pyro.sample(
                    "topic", dist.Categorical(document_topics), infer={"enumerate": "parallel"}
                )
                pyro.sample("word", dist.Categorical(topic_words[topic]), obs=words)
