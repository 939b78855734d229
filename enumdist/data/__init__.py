"""Real data sets that work offline and split the same way on every machine.

- :func:`load_chorales` -- Bach chorales (music21) as 88-key :class:`PianoRolls`, cached;
- :func:`load_tabular`, :func:`load_partially_labeled`, :func:`load_semisupervised` --
  scikit-learn's bundled tables;
- :func:`load_python_docs` -- the ``pydoc_data.topics`` help texts as a :class:`TextCorpus`.

Heavy libraries (music21, scikit-learn) are imported only when a loader runs.
"""

from enumdist.data.chorales import load_chorales
from enumdist.data.piano_roll import PianoRolls, validate_piano_roll
from enumdist.data.tabular import (
    SemiSupervisedSplits,
    TabularData,
    load_partially_labeled,
    load_semisupervised,
    load_tabular,
)
from enumdist.data.text import TextCorpus, load_python_docs

__all__ = [
    "PianoRolls",
    "SemiSupervisedSplits",
    "TabularData",
    "TextCorpus",
    "load_chorales",
    "load_partially_labeled",
    "load_python_docs",
    "load_semisupervised",
    "load_tabular",
    "validate_piano_roll",
]
