"""Tiny trained-looking run dirs (config, checkpoint, history, saved data) for decoding tests.

A uniquely named module (not conftest) so that spawned ranks import it unambiguously."""

from __future__ import annotations

import torch
from omegaconf import OmegaConf

import enumdist

torch.set_num_threads(1)

NUM_KEYS, HIDDEN_DIM = 5, 3


def hmm_marginals(model, batch):
    """Forward-backward posterior ``{f"x_{t}": [B, 1, D]}`` of an :class:`~enumdist.models.HMM`
    (steps past a sequence's length are left out)."""
    initial, transition, emission = (
        p.detach() for p in (model.initial, model.transition, model.emission)
    )
    marginals = {}
    for b, (notes, length) in enumerate(zip(batch["sequences"], batch["lengths"])):
        n = int(length)
        log_emit = torch.distributions.Bernoulli(emission).log_prob(notes[:n, None, :]).sum(-1)
        forward = [initial.log() + log_emit[0]]
        for t in range(1, n):
            forward.append(
                torch.logsumexp(forward[-1][:, None] + transition.log(), 0) + log_emit[t]
            )
        backward = [torch.zeros_like(initial)]
        for t in range(n - 1, 0, -1):
            backward.insert(0, torch.logsumexp(transition.log() + log_emit[t] + backward[0], -1))
        for t in range(n):
            probs = (forward[t] + backward[t]).softmax(-1)
            marginals.setdefault(
                f"x_{t}", torch.full((len(batch["lengths"]), 1, len(initial)), 1.0 / len(initial))
            )[b, 0] = probs
    num_steps = batch["sequences"].shape[1]
    for t in range(num_steps):
        marginals.setdefault(
            f"x_{t}", torch.full((len(batch["lengths"]), 1, len(initial)), 1.0 / len(initial))
        )
    return marginals


def piano_rolls(num_sequences, num_steps=7, num_keys=NUM_KEYS, seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, num_steps + 1, (num_sequences,), generator=g)
    sequences = (torch.rand(num_sequences, num_steps, num_keys, generator=g) < 0.4).float()
    sequences[torch.arange(num_steps) >= lengths.unsqueeze(-1)] = 0
    return {"sequences": sequences, "lengths": lengths}


def saved_splits_data(data_dir):
    """The ``data`` config of splits saved as ``<data_dir>/<split>.pt``."""
    return {
        "_target_": "enumdist.pipeline.data.ShardedDataModule",
        "load": {
            "_target_": "enumdist.pipeline.data.load_saved_split",
            "_partial_": True,
            "path": str(data_dir),
        },
    }


def make_run_dir(root, *, model_cls="HMM", test_split=None, seed=0, num_test=9):
    """Write config, data, checkpoint and history of a small HMM run under ``root``."""
    model_cfg = {
        "_target_": f"enumdist.models.{model_cls}",
        "num_keys": NUM_KEYS,
        "hidden_dim": HIDDEN_DIM,
        "seed": seed,
    }
    data_dir = root / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    for split, n in [("train", 6), ("valid", 3), ("test", num_test)]:
        torch.save(
            piano_rolls(n, seed=hash(split) % 1000)
            if split != "test" or test_split is None
            else test_split,
            data_dir / f"{split}.pt",
        )
    cfg = {
        "seed": 0,
        "model": model_cfg,
        "data": saved_splits_data(data_dir),
        "guide": {"_target_": "enumdist.pipeline.guides.empty", "_partial_": True},
    }
    model = getattr(enumdist.models, model_cls)(NUM_KEYS, HIDDEN_DIM, seed=seed + 7)
    return write_run_dir(root / "run", cfg, model.state_dict()), model


def write_run_dir(run_dir, cfg, state_dict, guide_state=None):
    """A run directory as training leaves it: ``.hydra/config.yaml``, ``checkpoints/last.ckpt``
    (the LightningModule's ``model.*`` and ``guide.*`` weights) and a loss history."""
    (run_dir / ".hydra").mkdir(parents=True, exist_ok=True)
    (run_dir / "checkpoints").mkdir(exist_ok=True)
    OmegaConf.save(OmegaConf.create(cfg), run_dir / ".hydra" / "config.yaml")
    state = {f"model.{k}": v for k, v in state_dict.items()}
    state.update({f"guide.{k}": v for k, v in (guide_state or {}).items()})
    torch.save({"state_dict": state, "epoch": 0}, run_dir / "checkpoints" / "last.ckpt")
    (run_dir / "train_history.csv").write_text("step,loss_per_obs\n0,3.5\n1,3.1\n2,2.9\n")
    return run_dir


def make_streamed_run_dir(root, data_root, num_keys, hidden_dim, seed=7):
    """An HMM run over synthetic Parquet shards (``data=synthetic_shards``, already generated)."""
    cfg = {
        "seed": 0,
        "model": {
            "_target_": "enumdist.models.HMM",
            "num_keys": num_keys,
            "hidden_dim": hidden_dim,
            "seed": seed,
        },
        "data": {
            "_target_": "enumdist.pipeline.streaming.StreamingDataModule",
            "root": str(data_root),
            "generate": None,
        },
        "guide": {"_target_": "enumdist.pipeline.guides.empty", "_partial_": True},
    }
    model = enumdist.models.HMM(num_keys, hidden_dim, seed=seed)
    return write_run_dir(root / "run", cfg, model.state_dict()), model


def make_mixture_run_dir(root):
    """A Gaussian-mixture run with an AutoDelta guide (tabular data, no lengths)."""
    from enumdist.pipeline.guides import auto

    g = torch.Generator().manual_seed(0)
    data_dir = root / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    for split, n in [("train", 10), ("valid", 4), ("test", 7)]:
        torch.save({"features": torch.randn(n, 2, generator=g) * 3}, data_dir / f"{split}.pt")
    model = enumdist.models.GaussianMixture(num_features=2, num_components=3, seed=0)
    guide = auto(model)
    batch = {"features": torch.zeros(2, 2), "index": torch.arange(2), "num_total": 2}
    guide(batch)
    with torch.no_grad():
        for p in guide.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g))
    cfg = {
        "seed": 0,
        "model": {
            "_target_": "enumdist.models.GaussianMixture",
            "num_features": 2,
            "num_components": 3,
            "seed": 0,
        },
        "data": saved_splits_data(data_dir),
        "guide": {
            "_target_": "enumdist.pipeline.guides.auto",
            "_partial_": True,
            "kind": "AutoDelta",
        },
    }
    run_dir = write_run_dir(root / "run", cfg, model.state_dict(), guide.state_dict())
    return run_dir, model, guide


def load_saved_copy(split, path):
    """A user's own data loader (outside the package): decoding needs it registered."""
    from enumdist.pipeline.data import load_saved_split

    return load_saved_split(split, path)


#: a tiny python_docs topic run: vocabulary, words per document, topics, fold-in settings
TOPIC_DATA = {"max_vocab": 40, "max_words": 12}
NUM_TOPICS, TOPIC_FOLD_IN = 3, {"steps": 15, "lr": 0.1}


def make_topic_run_dir(root):
    """A TopicModel run on the pydoc texts with an AutoDelta guide whose per-document topic
    weights belong to the 56 *training* documents (perturbed away from their init)."""
    from enumdist.data import load_python_docs
    from enumdist.pipeline.guides import auto

    model = enumdist.models.TopicModel(TOPIC_DATA["max_vocab"], NUM_TOPICS, seed=3)
    train = load_python_docs("train", **TOPIC_DATA)
    guide = auto(model)
    batch = {
        "documents": train.documents,
        "lengths": train.lengths,
        "index": torch.arange(len(train.lengths)),
        "num_total": len(train.lengths),
    }
    guide(batch)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in guide.parameters():
            p.add_(torch.randn(p.shape, generator=g))
    cfg = {
        "seed": 0,
        "model": {
            "_target_": "enumdist.models.TopicModel",
            "vocab_size": TOPIC_DATA["max_vocab"],
            "num_topics": NUM_TOPICS,
            "seed": 3,
        },
        "data": {
            "_target_": "enumdist.pipeline.data.ShardedDataModule",
            "load": {"_target_": "enumdist.data.load_python_docs", "_partial_": True, **TOPIC_DATA},
        },
        "guide": {"_target_": "enumdist.pipeline.guides.auto", "_partial_": True},
        "fold_in": TOPIC_FOLD_IN,
    }
    run_dir = root / "run"
    (run_dir / ".hydra").mkdir(parents=True, exist_ok=True)
    (run_dir / "checkpoints").mkdir(exist_ok=True)
    OmegaConf.save(OmegaConf.create(cfg), run_dir / ".hydra" / "config.yaml")
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    state.update({f"guide.{k}": v for k, v in guide.state_dict().items()})
    torch.save({"state_dict": state}, run_dir / "checkpoints" / "last.ckpt")
    return run_dir, model
