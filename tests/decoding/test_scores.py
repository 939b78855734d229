"""Each decoded item's probabilities against brute force (every path enumerated) and Pyro, in
float64: ``log p(z*, x)``, ``log p(x)``, ``p(z* | x)`` and the per-position confidence."""

import itertools

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.poutine.subsample_messenger import _Subsample

import enumdist
from enumdist.decoding import decode_batch, scores
from enumdist.models.base import EnumModel

NUM_KEYS, HIDDEN_DIM, NUM_STEPS = 3, 2, 4


def chain_batch(lengths=(4, 2, 3), seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor(lengths)
    sequences = (torch.rand(len(lengths), NUM_STEPS, NUM_KEYS, generator=g) < 0.5).double()
    sequences[torch.arange(NUM_STEPS) >= lengths.unsqueeze(-1)] = 0
    # positions 4.. of a split of 9: the items' own probabilities must not depend on either
    return {
        "sequences": sequences,
        "lengths": lengths,
        "index": torch.arange(4, 4 + len(lengths)),
        "num_total": 9,
    }


def all_path_log_probs(model, sequence, length):
    """``(paths {chain: [P, length]}, log p(path, x) [P])`` over every path of the item's real
    steps, by Pyro's own trace log-probabilities: the item is repeated once per path, each copy
    conditioned on its path (padded steps are masked, so their value is irrelevant)."""
    chains = model.chains
    grid = torch.tensor(
        list(itertools.product(range(model.hidden_dim), repeat=len(chains) * length))
    )
    num_paths = len(grid)
    grid = grid.reshape(num_paths, len(chains), length)
    batch = {
        "sequences": sequence.expand(num_paths, -1, -1),
        "index": torch.arange(num_paths),
        "lengths": torch.full((num_paths,), length),
        "num_total": num_paths,
    }
    values = {
        f"{c}_{t}": (
            grid[:, i, t] if t < length else torch.zeros(num_paths, dtype=torch.long)
        ).reshape(num_paths, 1)
        for i, c in enumerate(chains)
        for t in range(sequence.shape[0])
    }
    trace = poutine.trace(poutine.condition(model.model, values)).get_trace(batch)
    trace.compute_log_prob()
    log_p = sum(
        site["log_prob"].reshape(num_paths, -1).sum(-1)
        for site in trace.nodes.values()
        if site["type"] == "sample" and not isinstance(site["fn"], _Subsample)
    )
    return {c: grid[:, i] for i, c in enumerate(chains)}, log_p


@pytest.mark.parametrize("model_cls", ["HMM", "SecondOrderHMM", "FactorialHMM"])
def test_probabilities_equal_brute_force_and_pyro(model_cls):
    model = getattr(enumdist.models, model_cls)(NUM_KEYS, HIDDEN_DIM, seed=3).double()
    batch = chain_batch()
    out = decode_batch(model, None, batch, marginals=True, probabilities=True)
    for b, length in enumerate(batch["lengths"].tolist()):
        paths, log_p = all_path_log_probs(model, batch["sequences"][b], length)
        evidence = torch.logsumexp(log_p, 0)
        torch.testing.assert_close(out["log_evidence"][b], evidence, rtol=1e-10, atol=0)
        torch.testing.assert_close(out["log_joint"][b], log_p.max(), rtol=1e-10, atol=0)
        torch.testing.assert_close(
            out["path_posterior"][b], (log_p.max() - evidence).exp(), rtol=1e-9, atol=0
        )
        decoded = torch.ones(len(log_p), dtype=torch.bool)
        for chain, chain_paths in paths.items():
            decoded &= (chain_paths == out[chain][b, :length]).all(-1)
        assert int(decoded.sum()) == 1
        torch.testing.assert_close(out["log_joint"][b], log_p[decoded][0], rtol=1e-10, atol=0)
        posterior = (log_p - evidence).exp()
        for chain, chain_paths in paths.items():
            for t in range(length):
                agrees = chain_paths[:, t] == out[chain][b, t]
                assert out[f"{chain}_confidence"][b, t].item() == pytest.approx(
                    posterior[agrees].sum().item(), rel=1e-6
                )  # stored as float32
    # Pyro's TraceEnum_ELBO with nothing to guess: -loss is the evidence of all items together
    unscaled = dict(batch, num_total=len(batch["index"]))
    loss = pyro.infer.TraceEnum_ELBO(max_plate_nesting=2).loss(
        model.model, lambda b: None, unscaled
    )
    assert -loss == pytest.approx(out["log_evidence"].sum().item(), rel=1e-12)


def test_a_sampled_path_gets_its_own_joint_probability():
    model = enumdist.models.HMM(NUM_KEYS, HIDDEN_DIM, seed=5).double()
    batch = chain_batch(lengths=(4, 3))
    pyro.set_rng_seed(1)
    out = decode_batch(model, None, batch, temperature=1, probabilities=True)
    for b, length in enumerate(batch["lengths"].tolist()):
        paths, log_p = all_path_log_probs(model, batch["sequences"][b], length)
        sampled = (paths["x"] == out["x"][b, :length]).all(-1)
        torch.testing.assert_close(out["log_joint"][b], log_p[sampled][0], rtol=1e-10, atol=0)
        torch.testing.assert_close(
            out["log_evidence"][b], torch.logsumexp(log_p, 0), rtol=1e-10, atol=0
        )


def test_mixture_probabilities_are_given_the_guides_latents(tmp_path):
    from decoding_run_dirs import make_mixture_run_dir

    _, model, guide = make_mixture_run_dir(tmp_path)
    features = torch.randn(5, 2, generator=torch.Generator().manual_seed(2)) * 3
    batch = {"features": features, "index": torch.arange(5), "num_total": 5}
    out = decode_batch(model, guide, batch, probabilities=True)
    latents = poutine.trace(guide).get_trace(batch)
    weights, locs, scales = (latents.nodes[n]["value"] for n in ("weights", "locs", "scales"))
    joint = weights.log() + dist.Normal(locs, scales).log_prob(features[:, None]).sum(-1)  # [N, C]
    torch.testing.assert_close(
        out["log_evidence"], torch.logsumexp(joint, -1).double(), rtol=1e-5, atol=1e-5
    )
    torch.testing.assert_close(
        out["log_joint"], joint.max(-1).values.double(), rtol=1e-5, atol=1e-5
    )
    assert out["assignment"].squeeze(-1).tolist() == joint.argmax(-1).tolist()


class GlobalSwitch(EnumModel):
    """One enumerated switch shared by every item: the items' probabilities do not factorise."""

    def model(self, batch):
        switch = pyro.sample(
            "switch", dist.Categorical(torch.ones(2) / 2), infer={"enumerate": "parallel"}
        )
        with pyro.plate("data", batch["num_total"], subsample=batch["index"], dim=-1):
            pyro.sample("obs", dist.Normal(switch.double(), 1.0), obs=batch["features"])


def test_an_enumerated_site_outside_the_data_plate_is_named():
    batch = {
        "features": torch.zeros(3, dtype=torch.float64),
        "index": torch.arange(3),
        "num_total": 3,
    }
    with pytest.raises(ValueError, match=r"\['switch'\].*probabilities=false"):
        scores.log_evidence(GlobalSwitch().model, batch, "data", max_plate_nesting=1)


def test_semisupervised_labeled_points_are_certain_and_unlabeled_ones_summed():
    model = enumdist.models.SemiSupervisedClassifier(num_features=3, num_classes=2).double()
    features = torch.randn(5, 3, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    labels = torch.tensor([0, -1, 1, -1, -1])
    batch = {"features": features, "labels": labels, "index": torch.arange(5), "num_total": 5}
    out = decode_batch(model, None, batch, probabilities=True)
    joint = model.class_probs.log() + dist.Normal(model.locs, model.scales).log_prob(
        features[:, None]
    ).sum(-1)  # [N, C]
    labeled = labels >= 0
    expected = torch.where(
        labeled, joint.gather(-1, labels.clamp(min=0)[:, None])[:, 0], torch.logsumexp(joint, -1)
    ).detach()
    torch.testing.assert_close(out["log_evidence"], expected, rtol=1e-10, atol=0)
    torch.testing.assert_close(out["path_posterior"][labeled], torch.ones(2, dtype=torch.float64))
    unlabeled = ~labeled
    torch.testing.assert_close(
        out["path_posterior"][unlabeled],
        joint.softmax(-1).max(-1).values[unlabeled].detach(),
        rtol=1e-9,
        atol=0,
    )
