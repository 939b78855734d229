"""Held-out metrics of the model zoo on real data, as the field reports them; writes Markdown.

For each model: train from the same seeded init with ``enumdist.EnumELBO`` and with Pyro's
``TraceEnum_ELBO`` for the same number of Adam steps, then report the exact held-out negative
log-likelihood per observation (chorales: per time step, i.e. per 88-key chord restricted to the
keys in use; tabular: per data point) next to a simple baseline (independent Bernoulli per key /
one Gaussian). The two engines must agree.

    python experiments/zoo_report.py [--steps 25] [--max-sequences 32] [--out experiments/zoo_report.md]

The topic model is left out: its held-out likelihood needs per-document inference of the topic
weights (a local latent), which is not a single forward pass.
"""

from __future__ import annotations

import argparse
import math
import time

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import TraceEnum_ELBO

import enumdist
from enumdist import models
from enumdist.data import load_chorales, load_semisupervised, load_tabular
from enumdist.pipeline.guides import auto

HMMS = [models.HMM, models.AutoregressiveHMM, models.FactorialHMM, models.PartiallyFactorialHMM,
        models.NeuralEmissionHMM, models.SecondOrderHMM]


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
    return {"enumdist": enumdist.EnumELBO(max_plate_nesting=max_plate_nesting),
            "pyro": TraceEnum_ELBO(max_plate_nesting=max_plate_nesting)}


def bernoulli_baseline(train: dict, test: dict) -> float:
    """Independent Bernoulli per key, add-one smoothed, fit on train; nats per test time step."""
    mask = lambda b: (torch.arange(b["sequences"].shape[1]) < b["lengths"][:, None])  # noqa: E731
    on = (train["sequences"] * mask(train)[..., None]).sum((0, 1))
    probs = (on + 1) / (train["lengths"].sum() + 2)
    log_p = dist.Bernoulli(probs).log_prob(test["sequences"]).sum(-1)
    return float(-(log_p * mask(test)).sum() / test["lengths"].sum())


def hmm_rows(steps: int, max_sequences: int) -> list[tuple]:
    train, test = chorale_batches(max_sequences)
    num_keys = train["sequences"].shape[-1]
    rows = [("Bernoulli per key", "chorales", "nats / time step", bernoulli_baseline(train, test),
             None, 0.0)]
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
        rows.append((cls.__name__, "chorales", "nats / time step", results["enumdist"],
                     results["pyro"], time.perf_counter() - start))
    return rows


def gaussian_nll(features, weights, locs, scales) -> float:
    log_p = dist.Normal(locs, scales).log_prob(features[:, None, :]).sum(-1) + weights.log()
    return float(-torch.logsumexp(log_p, -1).mean())


def tabular_rows(steps: int) -> list[tuple]:
    rows = []
    train, test = load_tabular("iris", "train"), load_tabular("iris", "test")
    single = gaussian_nll(test.features, torch.ones(1), train.features.mean(0, keepdim=True),
                          train.features.std(0, keepdim=True))
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
        results[name] = gaussian_nll(test.features, point["weights"], point["locs"],
                                     point["scales"])
    rows.append(("GaussianMixture (MAP)", "iris", "nats / point", results["enumdist"],
                 results["pyro"], time.perf_counter() - start))

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
            test_batch = as_batch({"features": splits.test.features,
                                   "labels": torch.full_like(splits.test.labels, -1)})
            results[name] = elbo.loss(model.model, auto(model), test_batch) / len(test_batch["index"])
            predicted = model.predict_probs(splits.test.features).argmax(-1)
            accuracy[name] = float((predicted == splits.test.labels).float().mean())
    rows.append(("SemiSupervisedClassifier", "digits (10% labeled)", "nats / point",
                 results["enumdist"], results["pyro"], time.perf_counter() - start))
    rows.append(("  test accuracy", "digits", "fraction", accuracy["enumdist"], accuracy["pyro"],
                 0.0))
    return rows


def markdown(rows, steps: int) -> str:
    lines = [f"# Model zoo: held-out metrics ({steps} Adam steps, lr 0.05, seed 0)", "",
             "| model | data | metric (test) | enumdist | Pyro TraceEnum_ELBO | abs diff | seconds |",
             "|---|---|---|---|---|---|---|"]
    for model, data, metric, ours, theirs, seconds in rows:
        diff = "" if theirs is None else f"{abs(ours - theirs):.2e}"
        theirs = "" if theirs is None else f"{theirs:.4f}"
        lines.append(f"| {model} | {data} | {metric} | {ours:.4f} | {theirs} | {diff} | "
                     f"{seconds:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--max-sequences", type=int, default=32)
    parser.add_argument("--out", default="experiments/zoo_report.md")
    parser.add_argument("--skip-chorales", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rows = [] if args.skip_chorales else hmm_rows(args.steps, args.max_sequences)
    rows += tabular_rows(args.steps * 10)
    text = markdown(rows, args.steps)
    with open(args.out, "w") as file:
        file.write(text)
    print(text)
    assert all(t is None or math.isclose(o, t, rel_tol=1e-3, abs_tol=1e-3)
               for _, _, _, o, t, _ in rows), "enumdist and Pyro disagree"
    return text


if __name__ == "__main__":
    main()
