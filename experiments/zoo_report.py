"""Held-out metrics of the model zoo on real data, as the field reports them; writes Markdown.

For each model: train from the same seeded init with ``enumdist.EnumELBO`` and with Pyro's
``TraceEnum_ELBO`` for the same number of Adam steps, then report the exact held-out negative
log-likelihood per observation (chorales: per time step, i.e. per 88-key chord restricted to the
keys in use; tabular: per data point) next to a simple baseline (independent Bernoulli per key /
one Gaussian). The two engines must agree.

    python experiments/zoo_report.py [--steps 25] [--max-sequences 32] [--out experiments/zoo_report.md]
    python experiments/zoo_report.py --only topic --out /tmp/topic.md   # one group of rows

The topic model's held-out metric is *document completion* (Wallach et al., 2009): its topic
weights are a per-document latent, so each test document's first half is used to fit them (MAP,
a few Adam steps of the same ELBO with the trained topic-word distributions frozen) and the
second half is scored, exactly, with the topic of each word enumerated: nats per held-out token,
next to an add-one smoothed unigram baseline fit on the training documents.
"""

from __future__ import annotations

import argparse
import math
import time

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer import TraceEnum_ELBO

import enumdist
from enumdist import models
from enumdist.data import (
    load_chorales,
    load_python_docs,
    load_semisupervised,
    load_tabular,
)
from enumdist.pipeline.fold_in import fold_in
from enumdist.pipeline.guides import auto

HMMS = [
    models.HMM,
    models.AutoregressiveHMM,
    models.FactorialHMM,
    models.PartiallyFactorialHMM,
    models.NeuralEmissionHMM,
    models.SecondOrderHMM,
]


def as_batch(fields: dict) -> dict:
    n = next(iter(fields.values())).shape[0]
    return dict(fields, index=torch.arange(n), num_total=n)


def chorale_batches(max_sequences: int) -> tuple[dict, dict]:
    train = load_chorales("train", progress=False)
    test = load_chorales("test", progress=False)
    keys = train.active_keys()
    test = test.restrict_keys(keys, allow_dropping_notes=True)  # a handful of unseen-key notes
    train = train.restrict_keys(keys)

    def cut(rolls):
        n = min(max_sequences, len(rolls))
        t = int(rolls.lengths[:n].max())
        return as_batch({"sequences": rolls.sequences[:n, :t], "lengths": rolls.lengths[:n]})

    return cut(train), cut(test)


def fit(model, guide, batch, elbo, steps: int, lr: float = 0.05) -> float:
    params = list(model.parameters()) + list(guide.parameters())
    optimizer = torch.optim.Adam(params, lr=lr)
    for _ in range(steps):
        optimizer.zero_grad()
        loss = elbo.differentiable_loss(model.model, guide, batch)
        loss.backward()
        optimizer.step()
    return loss.item()


def engines(max_plate_nesting):
    return {
        "enumdist": enumdist.EnumELBO(max_plate_nesting=max_plate_nesting),
        "pyro": TraceEnum_ELBO(max_plate_nesting=max_plate_nesting),
    }


def bernoulli_baseline(train: dict, test: dict) -> float:
    """Independent Bernoulli per key, add-one smoothed, fit on train; nats per test time step."""
    mask = lambda b: torch.arange(b["sequences"].shape[1]) < b["lengths"][:, None]  # noqa: E731
    on = (train["sequences"] * mask(train)[..., None]).sum((0, 1))
    probs = (on + 1) / (train["lengths"].sum() + 2)
    log_p = dist.Bernoulli(probs).log_prob(test["sequences"]).sum(-1)
    return float(-(log_p * mask(test)).sum() / test["lengths"].sum())


def hmm_rows(steps: int, max_sequences: int) -> list[tuple]:
    train, test = chorale_batches(max_sequences)
    num_keys = train["sequences"].shape[-1]
    rows = [
        (
            "Bernoulli per key",
            "chorales",
            "nats / time step",
            bernoulli_baseline(train, test),
            None,
            0.0,
        )
    ]
    for cls in HMMS:
        results = {}
        start = time.perf_counter()
        for name, elbo in engines(2).items():
            pyro.clear_param_store()
            model = cls(num_keys=num_keys, hidden_dim=8, seed=0)
            guide = auto(model)
            fit(model, guide, train, elbo, steps)
            with torch.no_grad():
                results[name] = elbo.loss(model.model, guide, test) / float(test["lengths"].sum())
        rows.append(
            (
                cls.__name__,
                "chorales",
                "nats / time step",
                results["enumdist"],
                results["pyro"],
                time.perf_counter() - start,
            )
        )
    return rows


def gaussian_nll(features, weights, locs, scales) -> float:
    log_p = dist.Normal(locs, scales).log_prob(features[:, None, :]).sum(-1) + weights.log()
    return float(-torch.logsumexp(log_p, -1).mean())


def tabular_rows(steps: int) -> list[tuple]:
    rows = []
    train, test = load_tabular("iris", "train"), load_tabular("iris", "test")
    single = gaussian_nll(
        test.features,
        torch.ones(1),
        train.features.mean(0, keepdim=True),
        train.features.std(0, keepdim=True),
    )
    rows.append(("one Gaussian", "iris", "nats / point", single, None, 0.0))
    results, start = {}, time.perf_counter()
    for name, elbo in engines(1).items():
        pyro.clear_param_store()
        model = models.GaussianMixture(num_features=train.features.shape[1], num_components=3)
        batch = as_batch({"features": train.features})
        guide = auto(model)
        guide(batch)
        fit(model, guide, batch, elbo, steps)
        point = {k: v.detach() for k, v in guide.median(batch).items()}
        results[name] = gaussian_nll(
            test.features, point["weights"], point["locs"], point["scales"]
        )
    rows.append(
        (
            "GaussianMixture (MAP)",
            "iris",
            "nats / point",
            results["enumdist"],
            results["pyro"],
            time.perf_counter() - start,
        )
    )

    splits = load_semisupervised("digits", labeled_fraction=0.1)
    features = torch.cat([splits.labeled.features, splits.unlabeled.features])
    labels = torch.cat([splits.labeled.labels, splits.unlabeled.labels])
    batch = as_batch({"features": features, "labels": labels})
    results, accuracy, start = {}, {}, time.perf_counter()
    for name, elbo in engines(1).items():
        pyro.clear_param_store()
        model = models.SemiSupervisedClassifier(features.shape[1], splits.test.num_classes)
        fit(model, auto(model), batch, elbo, steps)
        with torch.no_grad():
            test_batch = as_batch(
                {
                    "features": splits.test.features,
                    "labels": torch.full_like(splits.test.labels, -1),
                }
            )
            results[name] = elbo.loss(model.model, auto(model), test_batch) / len(
                test_batch["index"]
            )
            predicted = model.predict_probs(splits.test.features).argmax(-1)
            accuracy[name] = float((predicted == splits.test.labels).float().mean())
    rows.append(
        (
            "SemiSupervisedClassifier",
            "digits (10% labeled)",
            "nats / point",
            results["enumdist"],
            results["pyro"],
            time.perf_counter() - start,
        )
    )
    rows.append(
        ("  test accuracy", "digits", "fraction", accuracy["enumdist"], accuracy["pyro"], 0.0)
    )
    return rows


def split_documents(corpus) -> tuple[dict, dict]:
    """Document completion batches: (first halves, second halves) of every document, each
    left-aligned and zero-padded; a document of L words keeps ceil(L/2) words in the first."""
    lengths = corpus.lengths
    observed = lengths - lengths // 2
    held_out = lengths // 2
    positions = torch.arange(corpus.documents.shape[1])
    source = (positions + observed[:, None]).clamp(max=corpus.documents.shape[1] - 1)
    second = corpus.documents.gather(1, source) * (positions < held_out[:, None])
    first = corpus.documents * (positions < observed[:, None])
    return (
        as_batch({"documents": first, "lengths": observed}),
        as_batch({"documents": second, "lengths": held_out}),
    )


def unigram_baseline(train, held_out: dict) -> float:
    """Add-one smoothed word frequencies of the training documents; nats per held-out token."""
    probs = (train.word_counts().sum(0) + 1) / (train.lengths.sum() + len(train.vocab))
    mask = torch.arange(held_out["documents"].shape[1]) < held_out["lengths"][:, None]
    log_p = probs.log()[held_out["documents"]] * mask
    return float(-log_p.sum() / held_out["lengths"].sum())


def completion_nll(model, elbo, held_out: dict, document_topics: torch.Tensor) -> float:
    """``-log p(second halves | document_topics, topic_words)`` per token, by ``elbo`` (the
    topics of the words enumerated), with the Dirichlet prior term of the conditioned weights
    added back; checked against the closed form ``sum_w log sum_k theta_dk phi_kw``."""
    conditioned = poutine.condition(model.model, data={"document_topics": document_topics})
    loss = elbo.loss(conditioned, lambda batch: None, held_out)
    prior = (
        dist.Dirichlet(torch.full((model.num_topics,), model.alpha)).log_prob(document_topics).sum()
    )
    nll = float(loss + prior)
    mask = torch.arange(held_out["documents"].shape[1]) < held_out["lengths"][:, None]
    theta = document_topics.reshape(-1, model.num_topics)  # the guide's [D, 1, K] -> [D, K]
    log_word = torch.logsumexp(theta.log()[:, :, None] + model.topic_words.log(), dim=1)  # [D, V]
    closed_form = -float((log_word.gather(1, held_out["documents"]) * mask).sum())
    assert math.isclose(nll, closed_form, rel_tol=1e-4), (nll, closed_form)
    return nll / float(held_out["lengths"].sum())


def topic_rows(
    steps: int, fold_in_steps: int = 50, num_topics: int = 10, train_words: int = 100
) -> list[tuple]:
    """TopicModel on the pydoc help texts: train on the training documents (their first
    ``train_words`` words: Pyro's engine takes seconds per full-length step on CPU), then document
    completion on the full test documents (see the module docstring), for both engines."""
    train, test = load_python_docs("train", max_words=train_words), load_python_docs("test")
    train_batch = as_batch({"documents": train.documents, "lengths": train.lengths})
    first, second = split_documents(test)
    what = (
        f"pydoc topics ({steps} steps; {len(test)} test docs, {fold_in_steps} fold-in steps, "
        f"{int(second['lengths'].sum())} held-out tokens)"
    )
    metric = "nats / held-out token"
    rows = [("unigram (add-one)", what, metric, unigram_baseline(train, second), None, 0.0)]
    results, start = {}, time.perf_counter()
    for name, elbo in engines(2).items():
        pyro.clear_param_store()
        # parameters on the modules, not in the global store: the fold-in guide would otherwise
        # find the training guide's per-document weights (56 documents) under the same name
        with pyro.settings.context(module_local_params=True):
            results[name] = fit_and_complete(
                train_batch, first, second, len(train.vocab), num_topics, elbo, steps, fold_in_steps
            )
    rows.append(
        (
            f"TopicModel ({num_topics} topics, MAP weights)",
            what,
            metric,
            results["enumdist"],
            results["pyro"],
            time.perf_counter() - start,
        )
    )
    return rows


def fit_and_complete(
    train_batch: dict,
    first: dict,
    second: dict,
    vocab_size: int,
    num_topics: int,
    elbo,
    steps: int,
    fold_in_steps: int,
) -> float:
    """Train a TopicModel with ``elbo``; fit the test documents' topic weights (MAP) on their
    first halves with the topic-word distributions frozen; nats per token of the second halves."""
    model = models.TopicModel(vocab_size=vocab_size, num_topics=num_topics, seed=0)
    guide = auto(model)
    guide(train_batch)
    fit(model, guide, train_batch, elbo, steps)
    # fresh per-document weights for the test documents, fitted with the model frozen
    folded = fold_in(model, auto, elbo, first, steps=fold_in_steps, lr=0.05)
    with torch.no_grad():
        document_topics = folded.auto.median(first)["document_topics"]
        return completion_nll(model, elbo, second, document_topics)


def markdown(rows, steps: int) -> str:
    lines = [
        f"# Model zoo: held-out metrics ({steps} Adam steps, lr 0.05, seed 0)",
        "",
        "| model | data | metric (test) | enumdist | Pyro TraceEnum_ELBO | abs diff | seconds |",
        "|---|---|---|---|---|---|---|",
    ]
    for model, data, metric, ours, theirs, seconds in rows:
        diff = "" if theirs is None else f"{abs(ours - theirs):.2e}"
        theirs = "" if theirs is None else f"{theirs:.4f}"
        lines.append(
            f"| {model} | {data} | {metric} | {ours:.4f} | {theirs} | {diff} | {seconds:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--max-sequences", type=int, default=32)
    parser.add_argument("--out", default="experiments/zoo_report.md")
    parser.add_argument("--skip-chorales", action="store_true")
    parser.add_argument(
        "--only",
        choices=["chorales", "tabular", "topic"],
        help="compute one group of rows (the table then holds only those)",
    )
    parser.add_argument("--topic-steps", type=int, default=100, help="topic model: training steps")
    parser.add_argument(
        "--fold-in-steps",
        type=int,
        default=50,
        help="topic model: Adam steps fitting the test documents' topic weights",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    groups = {
        "chorales": lambda: hmm_rows(args.steps, args.max_sequences),
        "tabular": lambda: tabular_rows(args.steps * 10),
        "topic": lambda: topic_rows(args.topic_steps, args.fold_in_steps),
    }
    chosen = (
        [args.only]
        if args.only
        else [g for g in groups if not (g == "chorales" and args.skip_chorales)]
    )
    rows = [row for group in chosen for row in groups[group]()]
    text = markdown(rows, args.steps)
    with open(args.out, "w") as file:
        file.write(text)
    print(text)
    assert all(
        t is None or math.isclose(o, t, rel_tol=1e-3, abs_tol=1e-3) for _, _, _, o, t, _ in rows
    ), "enumdist and Pyro disagree"
    return text


if __name__ == "__main__":
    main()
