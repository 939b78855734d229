"""A real text corpus that ships with Python itself, for topic models: the interactive-help
texts of ``pydoc_data.topics`` (79 documents in Python 3.11, such as ``"assert"``, ``"for"``,
``"typesonly"``; about 64k words). Offline, no download, always installed.

Tokenisation: lowercase runs of letters ``[a-z]+``; words shorter than 3 letters and English /
Python-doc stop words are dropped. The vocabulary comes from the *training* documents only:
words seen at least ``min_count`` times there, the ``max_vocab`` most frequent (ties broken
alphabetically), ids in that order. Words outside the vocabulary are dropped from every split.
Each document keeps its first ``max_words`` in-vocabulary words, so models stay fast on CPU.

Split: by SHA-256 of the topic key, ~70/15/15 (:mod:`enumdist.data.splits`). The texts follow
the running Python's version; the project pins Python 3.11.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

import torch

from enumdist.data.splits import check_split, select_split

STOP_WORDS = frozenset(
    [
        "the",
        "and",
        "for",
        "are",
        "but",
        "not",
        "you",
        "all",
        "any",
        "can",
        "had",
        "her",
        "was",
        "one",
        "our",
        "out",
        "has",
        "him",
        "his",
        "how",
        "its",
        "may",
        "new",
        "now",
        "old",
        "see",
        "two",
        "way",
        "who",
        "did",
        "get",
        "let",
        "say",
        "she",
        "too",
        "use",
        "that",
        "with",
        "have",
        "this",
        "will",
        "your",
        "from",
        "they",
        "been",
        "were",
        "said",
        "each",
        "which",
        "their",
        "them",
        "then",
        "than",
        "these",
        "some",
        "would",
        "make",
        "like",
        "into",
        "time",
        "look",
        "more",
        "could",
        "what",
        "when",
        "where",
        "there",
        "here",
        "also",
        "only",
        "such",
        "other",
        "over",
        "just",
        "most",
        "must",
        "very",
        "after",
        "before",
        "being",
        "both",
        "does",
        "done",
        "doing",
        "same",
        "should",
        "while",
        "about",
        "above",
        "below",
        "under",
        "again",
        "further",
        "once",
        "because",
        "until",
        "those",
        "through",
        "during",
        "between",
        "without",
        "within",
        "upon",
        "among",
        "whether",
        "either",
        "neither",
        "itself",
        "themselves",
        "following",
        "given",
        "used",
        "using",
        "see",
        "see",
        "also",
        "e.g",
        "etc",
    ]
)
_WORD = re.compile(r"[a-z]+")


@dataclass(frozen=True)
class TextCorpus:
    """Documents as padded word ids.

    Attributes:
        documents: long [D, L_max]; ``documents[d, :lengths[d]]`` are word ids into ``vocab``;
            positions ``>= lengths[d]`` hold 0 and must be masked out.
        lengths: long [D], number of words of each document (all >= 1).
        vocab: the words; id ``i`` is ``vocab[i]``.
        names: D topic keys (document names).
    """

    documents: torch.Tensor
    lengths: torch.Tensor
    vocab: list[str]
    names: list[str]

    def __len__(self) -> int:
        return len(self.names)

    def mask(self) -> torch.Tensor:
        """bool [D, L_max], True at real words, False at padding."""
        return torch.arange(self.documents.shape[1]) < self.lengths[:, None]

    def word_counts(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Bag of words: [D, V] counts of each vocabulary word in each document."""
        counts = torch.zeros(len(self), len(self.vocab), dtype=dtype)
        ones = self.mask().to(dtype)
        return counts.scatter_add_(1, self.documents, ones)


def tokenize(text: str) -> list[str]:
    """Lowercase letter runs of 3+ letters that are not stop words, in order."""
    return [w for w in _WORD.findall(text.lower()) if len(w) >= 3 and w not in STOP_WORDS]


def build_vocab(token_lists: list[list[str]], *, min_count: int, max_vocab: int) -> list[str]:
    """Words with at least ``min_count`` occurrences, most frequent first (ties alphabetical),
    at most ``max_vocab`` of them."""
    counts = Counter(word for tokens in token_lists for word in tokens)
    ranked = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
    return ranked[:max_vocab]


def load_python_docs(
    split: str, *, min_count: int = 5, max_vocab: int = 1000, max_words: int = 200
) -> TextCorpus:
    """Split ``split`` of the ``pydoc_data.topics`` corpus as a :class:`TextCorpus`; see the
    module docstring for tokenisation, vocabulary and split rules. Documents left with no
    in-vocabulary word are dropped."""
    check_split(split)
    if min_count < 1 or max_vocab < 1 or max_words < 1:
        raise ValueError(
            f"min_count, max_vocab and max_words must be >= 1, got {min_count}, {max_vocab}, {max_words}"
        )
    from pydoc_data.topics import topics

    names = sorted(topics)
    tokens = [tokenize(topics[name]) for name in names]
    train = select_split(names, "train", salt="pydoc-topics")
    vocab = build_vocab([tokens[i] for i in train], min_count=min_count, max_vocab=max_vocab)
    word_id = {word: i for i, word in enumerate(vocab)}

    kept_names, id_lists = [], []
    for i in select_split(names, split, salt="pydoc-topics"):
        ids = [word_id[w] for w in tokens[i] if w in word_id][:max_words]
        if ids:
            kept_names.append(names[i])
            id_lists.append(ids)
    if not id_lists:
        raise ValueError(
            f"the {split!r} split of pydoc_data.topics has no document with an in-vocabulary word "
            f"(vocabulary of {len(vocab)} words); lower min_count"
        )
    lengths = torch.tensor([len(ids) for ids in id_lists], dtype=torch.long)
    documents = torch.zeros(len(id_lists), int(lengths.max()), dtype=torch.long)
    for d, ids in enumerate(id_lists):
        documents[d, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    return TextCorpus(documents=documents, lengths=lengths, vocab=vocab, names=kept_names)
