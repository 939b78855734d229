import pytest
import torch

from enumdist.data.splits import SPLITS
from enumdist.data.text import load_python_docs, tokenize


def test_tokenize_drops_short_and_stop_words():
    assert tokenize("The for-loop RETURNS a value; see x") == ["loop", "returns", "value"]


def test_documents_are_padded_ids_of_one_vocabulary():
    corpora = {s: load_python_docs(s, max_words=50) for s in SPLITS}
    vocab = corpora["train"].vocab
    assert 100 < len(vocab) <= 1000
    assert sum(len(c) for c in corpora.values()) == 79
    for corpus in corpora.values():
        assert corpus.vocab == vocab and corpus.documents.dtype == torch.long
        assert corpus.documents.shape == (len(corpus), int(corpus.lengths.max()))
        assert corpus.lengths.max() <= 50 and corpus.lengths.min() >= 1
        assert (corpus.documents < len(vocab)).all() and (
            corpus.documents[~corpus.mask()] == 0
        ).all()
        assert torch.equal(corpus.word_counts().sum(1), corpus.lengths.float())


def test_deterministic():
    a, b = load_python_docs("valid"), load_python_docs("valid")
    assert a.names == b.names and torch.equal(a.documents, b.documents)


def test_errors():
    with pytest.raises(ValueError, match="must be >= 1"):
        load_python_docs("train", max_words=0)
    with pytest.raises(
        ValueError, match="has no document with an in-vocabulary word.*lower min_count"
    ):
        load_python_docs("test", min_count=10**6)
