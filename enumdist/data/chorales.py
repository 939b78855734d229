"""The Bach chorales shipped inside music21, as 88-key piano rolls at one step per quarter note.

Source: ``music21.corpus.getComposer("bach")`` (433 files, offline). Only four-part scores are
kept (a score whose ``parts`` are exactly four; five-part scores with an instrument part,
Roman-numeral analyses and the like are skipped): 368 sequences (music21 10.5), 24 to 193 steps,
mean 54; 45 keys ever sound on a beat under the rule below (all of them in the training split).

Rule (documented because several are in use): step ``t`` is quarter-note offset ``t`` from the
start of the score; key ``p`` is on at step ``t`` iff some note or chord tone of pitch ``p``
*sounds* at that instant, i.e. ``onset <= t < onset + duration``. A held note therefore stays on
across steps, and notes that start and end between two beats (passing eighths) are not seen.
Grace notes (no duration) are ignored, repeats are not expanded, and a sequence ends at the last
step where a note sounds.

Split: by SHA-256 of the file name (e.g. ``"bwv1.6.mxl"``), ~70/15/15 train/valid/test
(see :mod:`enumdist.data.splits`). Stable across machines and library orderings.

Cache: parsing takes about a minute on one core (it is parallel-unfriendly: music21 is pure
Python and the machines we run on have few cores, so it stays single-process). The parsed rolls of
all splits are stored once in ``<cache_dir>/chorales-v1.npz`` (see :mod:`enumdist.data.cache`
for where ``cache_dir`` is). A corrupt cache file, or one built by another music21 version, is
rebuilt with a warning that names the file and the reason.
"""

from __future__ import annotations

import math
import os
import warnings
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from enumdist.data.cache import CorruptCacheError, load_npz, resolve_cache_dir, save_npz_atomic
from enumdist.data.piano_roll import (
    LOWEST_MIDI_PITCH,
    NUM_PIANO_KEYS,
    PianoRolls,
    validate_piano_roll,
)
from enumdist.data.splits import check_split, select_split

#: bump when the parsing rule or the file layout changes; old caches are then rebuilt
FORMAT_VERSION = 1
SPLIT_SALT = "bach-chorales"
_CACHE_ARRAYS = ("rolls", "lengths", "names", "format_version", "music21_version")


def chorale_paths(limit: int | None = None) -> list[Path]:
    """The Bach files of music21's corpus, sorted by file name; the first ``limit`` if given."""
    from music21 import corpus

    paths = sorted(corpus.getComposer("bach"), key=lambda p: Path(p).name)
    return [Path(p) for p in paths[:limit]]


def chorale_roll(path: str | os.PathLike) -> np.ndarray | None:
    """Parse one corpus file into a uint8 [T, 88] roll (see the module docstring for the rule),
    or ``None`` if the score is not a four-part chorale."""
    from music21 import converter

    parser = converter.Converter()
    # forceSource/storePickle: always parse the file itself and leave no pickles in music21's
    # scratch directory, so the result depends only on the file and the music21 version.
    parser.parseFile(path, forceSource=True, storePickle=False)
    score = parser.stream
    parts = getattr(score, "parts", ())
    if len(parts) != 4:
        return None
    sounding = []  # (first step, one past the last step, key column)
    for part in parts:
        for element in part.flatten().notes:
            duration = Fraction(element.duration.quarterLength)
            if duration <= 0:
                continue
            onset = Fraction(element.offset)
            for pitch in element.pitches:
                key = pitch.midi - LOWEST_MIDI_PITCH
                if not 0 <= key < NUM_PIANO_KEYS:
                    raise ValueError(
                        f"{Path(path).name}: pitch {pitch} (MIDI {pitch.midi}) lies outside the "
                        f"88 piano keys (MIDI {LOWEST_MIDI_PITCH}..{LOWEST_MIDI_PITCH + NUM_PIANO_KEYS - 1})"
                    )
                # integer steps t with onset <= t < onset + duration
                sounding.append((math.ceil(onset), math.ceil(onset + duration), key))
    num_steps = max((stop for _, stop, _ in sounding), default=0)
    if num_steps == 0:
        return None
    roll = np.zeros((num_steps, NUM_PIANO_KEYS), dtype=np.uint8)
    for start, stop, key in sounding:
        roll[start:stop, key] = 1
    return roll


def build_chorales(paths: list[Path], *, progress: bool = True) -> dict[str, np.ndarray]:
    """Parse ``paths`` into the cache layout: ``rolls`` uint8 [sum of lengths, 88] (sequences
    concatenated in time), ``lengths`` [N], ``names`` [N] (file names), plus version stamps."""
    import music21

    rolls, names = [], []
    for path in tqdm(paths, desc="parsing Bach chorales", unit="file", disable=not progress):
        roll = chorale_roll(path)
        if roll is None:
            continue
        validate_piano_roll(roll, name=path.name)
        rolls.append(roll)
        names.append(path.name)
    if not rolls:
        raise ValueError(
            f"none of the {len(paths)} corpus files is a four-part chorale; "
            f"is music21's corpus complete? (first file: {paths[0] if paths else 'none'})"
        )
    return {
        "rolls": np.concatenate(rolls),
        "lengths": np.array([len(r) for r in rolls], dtype=np.int64),
        "names": np.array(names),
        "format_version": np.array(FORMAT_VERSION),
        "music21_version": np.array(music21.__version__),
    }


def _cache_problem(arrays: dict[str, np.ndarray]) -> str | None:
    """Why a readable cache cannot be used, or None if it can."""
    import music21

    if int(arrays["format_version"]) != FORMAT_VERSION:
        return f"format version {int(arrays['format_version'])} != {FORMAT_VERSION}"
    if str(arrays["music21_version"]) != music21.__version__:
        return f"built with music21 {arrays['music21_version']}, now {music21.__version__}"
    lengths = arrays["lengths"]
    if arrays["rolls"].shape != (int(lengths.sum()), NUM_PIANO_KEYS) or len(arrays["names"]) != len(
        lengths
    ):
        return "array shapes disagree with each other"
    return None


def load_all_chorales(
    *, cache_dir: str | os.PathLike | None = None, progress: bool = True, limit: int | None = None
) -> dict[str, np.ndarray]:
    """All four-part chorales in the cache layout of :func:`build_chorales`, from the cache if
    it is usable, else parsed and cached. ``limit`` parses only the first ``limit`` corpus files
    (for quick tests; cached under its own file name)."""
    suffix = "" if limit is None else f"-first{limit}"
    path = resolve_cache_dir(cache_dir) / f"chorales-v{FORMAT_VERSION}{suffix}.npz"
    if path.exists():
        try:
            arrays = load_npz(path, _CACHE_ARRAYS)
            problem = _cache_problem(arrays)
        except CorruptCacheError as error:
            problem = str(error)
        if problem is None:
            return arrays
        warnings.warn(f"rebuilding chorale cache {path}: {problem}", stacklevel=2)
    arrays = build_chorales(chorale_paths(limit), progress=progress)
    save_npz_atomic(path, arrays)
    return arrays


def load_chorales(
    split: str,
    *,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
    limit: int | None = None,
    dtype: torch.dtype = torch.float32,
) -> PianoRolls:
    """One split (``"train"``, ``"valid"`` or ``"test"``) of the chorales as 88-key
    :class:`PianoRolls` with ``sequences`` of ``dtype`` [N, T_max, 88], in file-name order.

    The first call parses the corpus (about a minute, with a progress bar unless
    ``progress=False``) and caches it; later calls read the cache. To model only the keys in
    use: ``train.restrict_keys(train.active_keys())`` and the same pitches for valid/test.
    """
    check_split(split)
    arrays = load_all_chorales(cache_dir=cache_dir, progress=progress, limit=limit)
    names = [str(n) for n in arrays["names"]]
    lengths = arrays["lengths"]
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    chosen = select_split(names, split, salt=SPLIT_SALT)
    if not chosen:
        raise ValueError(
            f"the {split!r} split of the chorales is empty ({len(names)} chorales in all"
            f"{'' if limit is None else f', limit={limit}'}); use more files (a larger or no limit)"
        )
    t_max = int(lengths[chosen].max())
    sequences = torch.zeros(len(chosen), t_max, NUM_PIANO_KEYS, dtype=dtype)
    for row, i in enumerate(chosen):
        roll = arrays["rolls"][starts[i] : starts[i] + lengths[i]]
        sequences[row, : lengths[i]] = torch.from_numpy(roll.astype(np.float64)).to(dtype)
    return PianoRolls(
        sequences=sequences,
        lengths=torch.as_tensor(lengths[chosen], dtype=torch.long),
        names=[names[i] for i in chosen],
        pitches=torch.arange(LOWEST_MIDI_PITCH, LOWEST_MIDI_PITCH + NUM_PIANO_KEYS),
    )
