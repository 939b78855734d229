"""The model zoo: plain Pyro models with enumerated discrete latents (see :mod:`.base`).

- HMM family for piano rolls (:mod:`.hmm`, scaffolding in :mod:`.hmm_base`);
- :class:`GaussianMixture` (Bayesian, with an autoguide over its global latents);
- :class:`TopicModel` (documents ⊃ words, one enumerated topic per word);
- :class:`SemiSupervisedClassifier` (labels observed or enumerated in one plate);
- :class:`FunctionModel`: any Pyro model function ``def model(batch)``, wrapped without a class.

Decode-friendly extras every zoo model has: ``state_sites(batch) -> {state name: [site, ...]}``
(sites in time/position order); HMMs add ``transition_matrices()``; models with latents a guide
must cover name them in ``global_latents`` and offer ``guide_model`` (the model with the
enumerated sites hidden).
"""

from enumdist.models.base import EnumModel
from enumdist.models.function import FunctionModel
from enumdist.models.hmm import (
    HMM,
    AutoregressiveHMM,
    FactorialHMM,
    NeuralEmissionHMM,
    PartiallyFactorialHMM,
    SecondOrderHMM,
)
from enumdist.models.mixture import GaussianMixture
from enumdist.models.semisupervised import SemiSupervisedClassifier
from enumdist.models.topic import TopicModel

__all__ = [
    "HMM",
    "AutoregressiveHMM",
    "EnumModel",
    "FactorialHMM",
    "FunctionModel",
    "GaussianMixture",
    "NeuralEmissionHMM",
    "PartiallyFactorialHMM",
    "SecondOrderHMM",
    "SemiSupervisedClassifier",
    "TopicModel",
]
