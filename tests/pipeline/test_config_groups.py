"""One config group option <-> one target: experiments pick model/data options and override values.

Guards against the old layout, where HMM experiments swapped ``model._target_`` and silently kept
the plain HMM's arguments: every experiment must compose to exactly the model it names below.
"""

from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from tests.pipeline.conftest import compose_config

PACKAGE_CONF = Path(__file__).resolve().parents[2] / "enumdist" / "conf"
HMM = {"num_keys": 88, "prior_strength": 0.0, "seed": 0}

# experiment -> (model option, model config it must compose to)
EXPECTED = {
    "chorale_hmm": ("chorale_hmm", {"_target_": "enumdist.models.HMM", "hidden_dim": 16, **HMM}),
    "chorale_arhmm": (
        "chorale_arhmm",
        {"_target_": "enumdist.models.AutoregressiveHMM", "hidden_dim": 8, **HMM},
    ),
    "chorale_factorial_hmm": (
        "chorale_factorial_hmm",
        {"_target_": "enumdist.models.FactorialHMM", "hidden_dim": 8, **HMM},
    ),
    "chorale_partially_factorial_hmm": (
        "chorale_partially_factorial_hmm",
        {"_target_": "enumdist.models.PartiallyFactorialHMM", "hidden_dim": 8, **HMM},
    ),
    "chorale_second_order_hmm": (
        "chorale_second_order_hmm",
        {"_target_": "enumdist.models.SecondOrderHMM", "hidden_dim": 8, **HMM},
    ),
    "chorale_nn_hmm": (
        "chorale_nn_hmm",
        {
            "_target_": "enumdist.models.NeuralEmissionHMM",
            "hidden_dim": 8,
            "network_width": 32,
            **HMM,
        },
    ),
    "chorales_long": (
        "long_chain_bernoulli",
        {
            "_target_": "enumdist.models.long_chain_hmm.BernoulliLongChainHMM",
            "hidden_dim": 16,
            "num_keys": 88,
            "seed": 0,
        },
    ),
    "digits_semisupervised": (
        "semisupervised_classifier",
        {
            "_target_": "enumdist.models.SemiSupervisedClassifier",
            "num_features": 64,
            "num_classes": 10,
            "min_scale": 0.1,
            "seed": 0,
        },
    ),
    "hmm_1m": ("chorale_hmm", {"_target_": "enumdist.models.HMM", "hidden_dim": 8, **HMM}),
    "iris_mixture": (
        "gaussian_mixture",
        {
            "_target_": "enumdist.models.GaussianMixture",
            "num_features": 4,
            "num_components": 3,
            "seed": 0,
        },
    ),
    "long_chain": (
        "long_chain_gaussian",
        {
            "_target_": "enumdist.models.long_chain_hmm.GaussianLongChainHMM",
            "hidden_dim": 4,
            "scale": 1.0,
            "loc_init_scale": 2.0,
            "seed": 0,
        },
    ),
    "python_docs_topics": (
        "topic_model",
        {
            "_target_": "enumdist.models.TopicModel",
            "vocab_size": 1000,
            "num_topics": 10,
            "alpha": 0.5,
            "seed": 0,
        },
    ),
}


def test_every_packaged_experiment_is_listed():
    assert sorted(p.stem for p in (PACKAGE_CONF / "experiment").glob("*.yaml")) == sorted(EXPECTED)


@pytest.mark.parametrize("experiment", sorted(EXPECTED))
def test_experiment_composes_to_its_models_target_and_arguments(experiment, tmp_path):
    option, model = EXPECTED[experiment]
    cfg = compose_config(f"experiment={experiment}", run_dir=tmp_path, return_hydra_config=True)
    assert cfg.hydra.runtime.choices.model == option
    assert OmegaConf.to_container(cfg.model, resolve=True) == model


def _targets(node):
    if isinstance(node, dict):
        yield from (["_target_"] if "_target_" in node else [])
        for value in node.values():
            yield from _targets(value)
    elif isinstance(node, list):
        for value in node:
            yield from _targets(value)


@pytest.mark.parametrize(
    "path", sorted((PACKAGE_CONF / "experiment").glob("*.yaml")), ids=lambda p: p.stem
)
def test_experiments_define_no_targets(path):
    assert not list(_targets(yaml.safe_load(path.read_text()))), (
        f"{path.name}: pick a group option instead"
    )


@pytest.mark.parametrize("group", ["model", "data"])
def test_each_group_option_has_its_own_target(group):
    targets = {}
    for path in sorted((PACKAGE_CONF / group).glob("*.yaml")):
        node = yaml.safe_load(path.read_text())
        key = node["load"]["_target_"] if "load" in node else node["_target_"]
        assert key not in targets, f"{group}/{path.stem} and {group}/{targets[key]} share {key}"
        targets[key] = path.stem


def test_non_checks_live_in_their_own_modules_and_old_imports_still_work():
    from enumdist.pipeline import checkpoint_files, checks, groups

    assert checks.instantiate_group is groups.instantiate_group
    assert checks.resolve_ckpt_path is checkpoint_files.resolve_ckpt_path
    assert "instantiate_group" not in vars(checks) and "resolve_ckpt_path" not in vars(checks)


@pytest.mark.parametrize("name", ["read_history", "_load_split", "root_dir:"])
def test_dead_code_stays_deleted(name):
    import subprocess

    found = subprocess.run(
        [
            "git",
            "grep",
            "-n",
            name,
            "--",
            "enumdist/pipeline",
            "enumdist/decoding",
            "enumdist/conf/paths",
        ],
        cwd=PACKAGE_CONF.parents[1],
        capture_output=True,
        text=True,
    ).stdout
    assert found == "", found
