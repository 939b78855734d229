"""infer_discrete: MAP equals Pyro's exactly; samples follow the brute-force posterior."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine

import enumdist
from tests.engine.brute_force import joint_posterior
from tests.engine.zoo import CASES, global_outside_plate, hmm_masked

DECODABLE = [c for c in CASES if c.decodable]


def decoded_values(infer_discrete, case, temperature):
    pyro.clear_param_store()
    first_dim = -1 - case.max_plate_nesting
    decoder = infer_discrete(case.model, first_available_dim=first_dim, temperature=temperature)
    trace = poutine.trace(decoder).get_trace(*case.args)
    return {
        name: site["value"]
        for name, site in trace.nodes.items()
        if site["type"] == "sample"
        and not site["is_observed"]
        and type(site["fn"]).__name__ != "_Subsample"
    }


def assert_same_values(expected, actual):
    assert expected.keys() == actual.keys()
    for name in expected:
        e, a = torch.broadcast_tensors(expected[name], actual[name])
        assert torch.equal(e, a), name


def map_values(infer_discrete, model, args, first_available_dim):
    """``{site: MAP value}`` of every latent site, decoded by ``infer_discrete``."""
    pyro.clear_param_store()
    decoder = infer_discrete(model, first_available_dim=first_available_dim, temperature=0)
    trace = poutine.trace(decoder).get_trace(*args)
    return {
        name: site["value"]
        for name, site in trace.nodes.items()
        if site["type"] == "sample" and not site["is_observed"]
    }


@pytest.mark.parametrize("case", DECODABLE, ids=[c.name for c in DECODABLE])
def test_map_equals_pyro(case):
    assert_same_values(
        decoded_values(pyro.infer.infer_discrete, case, 0),
        decoded_values(enumdist.infer_discrete, case, 0),
    )


def test_map_equals_brute_force_argmax():
    data = torch.tensor([0.3, -1.2, 2.0])
    model = global_outside_plate
    assignments, probs = joint_posterior(model, (data,), {"g": ((), 2), "z": ((3,), 3)})
    best = assignments[int(probs.argmax())]
    values = poutine.trace(
        enumdist.infer_discrete(model, first_available_dim=-2, temperature=0)
    ).get_trace(data)
    assert int(values.nodes["g"]["value"]) == int(best["g"])
    assert values.nodes["z"]["value"].reshape(-1).tolist() == best["z"].tolist()


def test_samples_follow_exact_posterior():
    """Vectorise 20000 independent decodes with an outer plate; compare to brute force."""
    data = torch.tensor([0.3, -1.2, 2.0])
    num_draws = 20000

    def batched(data):
        with pyro.plate("draws", num_draws, dim=-2):
            global_outside_plate(data)

    pyro.set_rng_seed(0)
    trace = poutine.trace(
        enumdist.infer_discrete(batched, first_available_dim=-3, temperature=1)
    ).get_trace(data)
    g = trace.nodes["g"]["value"].reshape(num_draws)
    z = trace.nodes["z"]["value"].reshape(num_draws, 3)
    assignments, probs = joint_posterior(
        global_outside_plate, (data,), {"g": ((), 2), "z": ((3,), 3)}
    )
    # every marginal of g, of each z_i and of the pairs (g, z_i) within 5 standard errors
    checks = []
    for gv in range(2):
        checks.append((g == gv, sum(p for a, p in zip(assignments, probs) if a["g"] == gv)))
        for i in range(3):
            for zv in range(3):
                exact = sum(
                    p for a, p in zip(assignments, probs) if a["g"] == gv and a["z"][i] == zv
                )
                checks.append(((g == gv) & (z[:, i] == zv), exact))
    for hits, exact in checks:
        freq = hits.double().mean()
        tolerance = 5 * (exact * (1 - exact) / num_draws) ** 0.5 + 1e-3
        assert abs(freq - exact) < tolerance, (float(freq), float(exact))


def test_samples_are_random_and_map_is_not():
    ys, lengths = torch.randn(5, 3), torch.tensor([5, 5, 5])
    draws = [
        poutine.trace(enumdist.infer_discrete(hmm_masked, first_available_dim=-2, temperature=1))
        .get_trace(ys, lengths)
        .nodes["x_2"]["value"]
        for _ in range(20)
    ]
    assert len({tuple(d.reshape(-1).tolist()) for d in draws}) > 1
    maps = [
        poutine.trace(enumdist.infer_discrete(hmm_masked, first_available_dim=-2, temperature=0))
        .get_trace(ys, lengths)
        .nodes["x_2"]["value"]
        for _ in range(3)
    ]
    assert all(torch.equal(m, maps[0]) for m in maps)


def test_bad_temperature_is_refused():
    with pytest.raises(ValueError, match="temperature must be 0"):
        enumdist.infer_discrete(hmm_masked, temperature=0.5)


def test_map_with_masks_anywhere_in_the_chain_equals_pyro():
    """Masked-out steps in the middle of sequences (not only past their ends): the chain's
    masked transitions must act as Pyro's zeroed log-probs do."""

    def model(ys, mask):
        trans = pyro.param(
            "trans_m",
            torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.3, 0.3, 0.4]], dtype=torch.float64),
        )
        with pyro.plate("sequences", ys.shape[1], dim=-1):
            x = 0
            for t in pyro.markov(range(ys.shape[0])):
                with poutine.mask(mask=mask[t]):
                    x = pyro.sample(
                        f"x_{t}", dist.Categorical(trans[x]), infer={"enumerate": "parallel"}
                    )
                    pyro.sample(f"y_{t}", dist.Normal(x.double() - 1.0, 0.8), obs=ys[t])

    generator = torch.Generator().manual_seed(3)
    ys = torch.randn(9, 6, generator=generator, dtype=torch.float64)
    mask = torch.rand(9, 6, generator=generator) > 0.3
    assert_same_values(
        map_values(pyro.infer.infer_discrete, model, (ys, mask), -2),
        map_values(enumdist.infer_discrete, model, (ys, mask), -2),
    )


def test_map_with_a_mask_over_some_of_the_chain_plates_equals_pyro():
    """The chain lives in two plates; the mask varies along one of them only."""

    def model(ys, mask):
        trans = pyro.param("trans_p", torch.tensor([[0.8, 0.2], [0.3, 0.7]], dtype=torch.float64))
        with pyro.plate("rows", ys.shape[1], dim=-2), pyro.plate("cols", ys.shape[2], dim=-1):
            x = 0
            for t in pyro.markov(range(ys.shape[0])):
                with poutine.mask(mask=mask[t].unsqueeze(-1)):
                    x = pyro.sample(
                        f"x_{t}", dist.Categorical(trans[x]), infer={"enumerate": "parallel"}
                    )
                    pyro.sample(f"y_{t}", dist.Normal(2.0 * x.double() - 1.0, 1.0), obs=ys[t])

    generator = torch.Generator().manual_seed(5)
    ys = torch.randn(7, 3, 2, generator=generator, dtype=torch.float64)
    mask = torch.rand(7, 3, generator=generator) > 0.3
    assert_same_values(
        map_values(pyro.infer.infer_discrete, model, (ys, mask), -3),
        map_values(enumdist.infer_discrete, model, (ys, mask), -3),
    )


def test_shard_plates_on_one_process_must_name_a_plate_of_the_model():
    """As EnumELBO does: a typo in shard_plates is refused on one process too."""
    data = torch.tensor([0.3, -1.2, 2.0])
    decoder = enumdist.infer_discrete(
        global_outside_plate, first_available_dim=-2, temperature=0, shard_plates=["no_such_plate"]
    )
    with pytest.raises(
        enumdist.engine.errors.EnumerationError,
        match=r"shard_plates names \['no_such_plate'\].*plates: \['data'\]",
    ):
        decoder(data)
    checked = enumdist.infer_discrete(
        global_outside_plate, first_available_dim=-2, temperature=0, shard_plates=["data"]
    )
    assert_same_values(
        map_values(enumdist.infer_discrete, global_outside_plate, (data,), -2),
        {
            n: s["value"]
            for n, s in poutine.trace(checked).get_trace(data).nodes.items()
            if s["type"] == "sample" and not s["is_observed"]
        },
    )
