"""Recovery of the truth: an HMM trained on streamed shards drawn from a known HMM matches it.

Small enough for CI (4000 sequences of 20-40 steps, 3 states, 12 keys, a few hundred steps);
the negative controls show that the same checks reject shuffled labels and a wrong model.
"""

import numpy as np
import pytest

from enumdist.data.synthetic import SyntheticSpec, true_model
from enumdist.models import HMM
from enumdist.models.fast_hmm import VectorisedHMM
from enumdist.pipeline.recovery import fit_on_shards, heldout_batches, recovery_report

SPEC = SyntheticSpec.of_sizes(
    4000, 200, 300, num_keys=12, hidden_dim=3, max_length=40, shard_size=500, seed=3
)


@pytest.fixture(scope="module")
def root(synthetic_root):
    return synthetic_root(SPEC)


def train(root, hidden_dim, steps=200, seed=0, model_class=HMM):
    """Minibatch SVI on the streamed shards (EnumELBO on the zoo's python-loop HMM by default)."""
    model = model_class(num_keys=SPEC.num_keys, hidden_dim=hidden_dim, seed=seed)
    return fit_on_shards(root, model, steps, batch_size=64, seed=seed)


@pytest.fixture(scope="module")
def heldout(root):
    return heldout_batches(root, "test", batch_size=100)


@pytest.fixture(scope="module")
def learned(root):
    return train(root, SPEC.hidden_dim)


@pytest.mark.slow
def test_learned_hmm_recovers_the_truth(root, learned, heldout):
    batches, states = heldout
    report = recovery_report(true_model(root), learned, batches, states)
    print(report)
    assert report["passed"] == {"parameters": True, "loss": True, "decoding": True}, report
    assert report["map_agreement"]["truth"] > 0.9  # the data are informative about the states


@pytest.mark.slow
def test_shuffled_labels_are_rejected(root, learned, heldout):
    batches, states = heldout
    rng = np.random.default_rng(0)
    shuffled = {chain: [rng.permutation(s) for s in seqs] for chain, seqs in states.items()}
    report = recovery_report(true_model(root), learned, batches, shuffled)
    assert not report["passed"]["decoding"], report


@pytest.mark.slow
def test_a_wrong_model_is_rejected(root, heldout):
    batches, states = heldout
    # one state too few; trained by the vectorised twin (same parameters, faster)
    trained = train(root, SPEC.hidden_dim - 1, steps=150, model_class=VectorisedHMM)
    wrong = HMM(num_keys=SPEC.num_keys, hidden_dim=SPEC.hidden_dim - 1).double()
    wrong.load_state_dict(trained.state_dict())
    report = recovery_report(true_model(root), wrong, batches, states)
    assert not report["passed"]["parameters"], report
    assert not report["passed"]["loss"], report
    assert not report["passed"]["decoding"], report


def test_emissions_seeded_from_frames_start_near_distinct_true_states(root):
    from enumdist.pipeline.recovery import match_states, seed_emission_from_frames
    from enumdist.pipeline.streaming import StreamingDataModule

    datamodule = StreamingDataModule(str(root))
    batch = datamodule.probe_batch("train", 64)
    truth = true_model(root).emission.detach().numpy()

    def distance(model):
        rows = model.emission.detach().double().numpy()
        relabel = match_states(truth, rows)
        return np.abs(rows - truth[relabel]).sum(-1).mean()

    seeded, random = [], []
    for seed in range(4):
        model = HMM(num_keys=SPEC.num_keys, hidden_dim=SPEC.hidden_dim, seed=seed)
        random.append(distance(model))
        seed_emission_from_frames(model, batch, seed)
        seeded.append(distance(model))
        emission = model.emission.detach()
        assert ((emission >= 0.05 - 1e-6) & (emission <= 0.95 + 1e-6)).all()
        assert len({tuple(row.tolist()) for row in emission}) == SPEC.hidden_dim  # distinct
    assert np.mean(seeded) < 0.6 * np.mean(random), (seeded, random)
