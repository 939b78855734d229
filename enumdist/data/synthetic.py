"""Ground-truth piano-roll data: N sequences drawn from a *known* HMM, written in Parquet shards.

Used to train at scale out of core and to check that what is learned is the truth
(:mod:`enumdist.pipeline.recovery`). Two known models, chorale-shaped (binary keys per step):

``hmm``            x_t ~ Cat(transition[x_{t-1}]);  key_k at t ~ Bernoulli(emission[x_t, k])
``factorial_hmm``  two independent chains w, x;     key_k at t ~ Bernoulli(emission[w_t, x_t, k])

The parameters are exactly those of :class:`enumdist.models.HMM` / :class:`~enumdist.models.FactorialHMM`
(same names and shapes), so the zoo model can be evaluated at the truth (:func:`true_model`).

Layout of ``root``::

    manifest.json                  what was generated (model, sizes, seed, shard sizes)
    truth.npz                      the true parameters (initial, transition, emission, ...)
    <split>/shard-00000.parquet    one Parquet file per shard of ``shard_size`` items

Each shard has one row per item: ``index`` int64 (position in the split), ``length`` int16,
``keys`` list<list<uint8>> (the sounding keys of each step: a sparse piano roll) and the true
hidden states, one list<uint8> column per chain (``x``; ``w`` and ``x`` for the factorial HMM).

Generation is resumable and atomic: shard ``s`` of a split is drawn from its own seed
``(seed, split, s)`` and written to a temporary file that is fsync'ed and renamed into place, so a
shard exists complete or not at all, and a rerun after a kill skips the finished shards and
writes the same bytes for the rest. A rerun with other settings than the manifest's is refused.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from enumdist.atomic import atomic_path
from enumdist.data.cache import load_npz, save_npz_atomic

MODELS = {"hmm": ("x",), "factorial_hmm": ("w", "x")}
SPLIT_CODES = {"train": 0, "valid": 1, "test": 2}
FORMAT_VERSION = 1
EMISSION_GRID = 2**16


@dataclass(frozen=True)
class SyntheticSpec:
    """What to generate. ``num_items`` per split; lengths uniform in ``[min_length, max_length]``."""

    model: str = "hmm"
    num_keys: int = 88
    hidden_dim: int = 8
    num_items: tuple[tuple[str, int], ...] = (("train", 10_000), ("valid", 1_000), ("test", 1_000))
    min_length: int = 20
    max_length: int = 200
    shard_size: int = 1_000
    seed: int = 0

    def __post_init__(self):
        if self.model not in MODELS:
            raise ValueError(f"model={self.model!r}: expected one of {sorted(MODELS)}")
        if not 1 <= self.min_length <= self.max_length <= 32767:
            raise ValueError(
                f"lengths: need 1 <= min_length <= max_length, got "
                f"[{self.min_length}, {self.max_length}]"
            )
        if self.hidden_dim > 255 or self.num_keys > 256:
            raise ValueError("hidden_dim <= 255 and num_keys <= 256 (stored as uint8)")

    @classmethod
    def of_sizes(
        cls, num_train: int, num_eval: int, num_test: int | None = None, **fields
    ) -> SyntheticSpec:
        """The spec with ``num_train`` training items and ``num_eval`` in valid and in test
        (``num_test`` if given); the other fields as :class:`SyntheticSpec`'s."""
        sizes = (("train", num_train), ("valid", num_eval), ("test", num_test or num_eval))
        return cls(num_items=tuple((split, int(n)) for split, n in sizes), **fields)

    def to_json(self) -> dict:
        data = asdict(self)
        data["num_items"] = dict(self.num_items)
        return data


def true_parameters(spec: SyntheticSpec) -> dict[str, np.ndarray]:
    """Well-separated, chorale-like parameters (float64), drawn from ``spec.seed``.

    Each state (per chain) sounds a "chord" of 3-5 keys with probability 0.6-0.9, every other key
    with 0.01; transitions are sticky (0.8 on the diagonal). The factorial emission is the noisy-OR
    of the two chains' chords (two voices sounding together).
    """
    rng = np.random.default_rng([spec.seed, 99])
    D, K = spec.hidden_dim, spec.num_keys

    def transition():
        noise = rng.dirichlet(np.ones(D), size=D)
        return 0.8 * np.eye(D) + 0.2 * noise

    def chords():
        probs = np.full((D, K), 0.01)
        for s in range(D):
            keys = rng.choice(K, size=rng.integers(3, 6), replace=False)
            probs[s, keys] = rng.uniform(0.6, 0.9, size=len(keys))
        return probs

    initial = lambda: rng.dirichlet(np.full(D, 5.0))  # noqa: E731
    if spec.model == "hmm":
        return {"initial": initial(), "transition": transition(), "emission": _on_grid(chords())}
    a, b = chords(), chords()
    emission = 1 - (1 - a[:, None, :]) * (1 - b[None, :, :])
    return {
        "initial_w": initial(),
        "initial_x": initial(),
        "transition_w": transition(),
        "transition_x": transition(),
        "emission": _on_grid(emission),
    }


def _on_grid(probs: np.ndarray) -> np.ndarray:
    """Emission probabilities rounded to multiples of ``1 / 2**16``: then comparing uniform
    uint16 draws with ``probs * 2**16`` is an *exact* Bernoulli draw, 3x cheaper than floats."""
    return np.clip(np.round(probs * EMISSION_GRID), 1, EMISSION_GRID - 1) / EMISSION_GRID


def _sample_chain(rng, initial, transition, num_items, num_steps) -> np.ndarray:
    """States ``[num_items, num_steps]`` of a Markov chain, by inverse CDF (vectorised over items)."""
    states = np.empty((num_items, num_steps), dtype=np.int64)
    cdf0, cdf = np.cumsum(initial), np.cumsum(transition, -1)
    states[:, 0] = (rng.random(num_items)[:, None] > cdf0).sum(-1)
    for t in range(1, num_steps):
        u = rng.random(num_items)[:, None]
        states[:, t] = (u > cdf[states[:, t - 1]]).sum(-1)
    return np.minimum(states, len(initial) - 1)  # guard against cdf rounding below 1


def _thresholds(probs: np.ndarray) -> np.ndarray:
    return np.round(probs * EMISSION_GRID).astype(np.uint16)  # exact: probs are on the grid


def sample_shard(
    spec: SyntheticSpec,
    params: dict[str, np.ndarray],
    split: str,
    shard: int,
    start: int,
    num_items: int,
) -> pa.Table:
    """Items ``start .. start + num_items`` of ``split``, drawn from their own seed."""
    rng = np.random.default_rng([spec.seed, SPLIT_CODES[split], shard])
    lengths = rng.integers(spec.min_length, spec.max_length + 1, size=num_items)
    T = int(lengths.max())
    if spec.model == "hmm":
        states = {"x": _sample_chain(rng, params["initial"], params["transition"], num_items, T)}
        thresholds = _thresholds(params["emission"])[states["x"]]  # [n, T, K]
    else:
        states = {
            c: _sample_chain(rng, params[f"initial_{c}"], params[f"transition_{c}"], num_items, T)
            for c in ("w", "x")
        }
        thresholds = _thresholds(params["emission"])[states["w"], states["x"]]
    sounding = rng.integers(0, EMISSION_GRID, size=thresholds.shape, dtype=np.uint16) < thresholds
    sounding &= (np.arange(T)[None, :] < lengths[:, None])[..., None]
    # sparse rolls: flat keys, per-step offsets into them, per-item offsets into the steps
    item_steps = np.concatenate([[0], np.cumsum(lengths)])
    valid_steps = np.arange(T)[None, :] < lengths[:, None]
    per_step = sounding.sum(-1)[valid_steps]  # row-major over (item, t < length)
    _, _, keys = np.nonzero(sounding)
    step_list = pa.ListArray.from_arrays(
        pa.array(np.concatenate([[0], np.cumsum(per_step)]).astype(np.int32)),
        pa.array(keys.astype(np.uint8)),
    )
    columns = {
        "index": pa.array(np.arange(start, start + num_items, dtype=np.int64)),
        "length": pa.array(lengths.astype(np.int16)),
        "keys": pa.ListArray.from_arrays(pa.array(item_steps.astype(np.int32)), step_list),
    }
    for chain, values in states.items():
        columns[chain] = pa.ListArray.from_arrays(
            pa.array(item_steps.astype(np.int32)), pa.array(values[valid_steps].astype(np.uint8))
        )
    return pa.table(columns)


def shard_path(root: str | os.PathLike, split: str, shard: int) -> Path:
    return Path(root) / split / f"shard-{shard:05d}.parquet"


def write_parquet_durably(table: pa.Table, path: Path) -> None:
    """Temporary file next to ``path``, fsync, rename: ``path`` is absent or complete."""
    with atomic_path(path) as temporary:
        pq.write_table(table, temporary, compression="zstd")


def generate(root: str | os.PathLike, spec: SyntheticSpec, progress: bool = True) -> Path:
    """Write (or finish writing) the data set ``spec`` under ``root``; returns ``root``.

    Finished shards are kept (resumable); a ``root`` holding another spec raises ``ValueError``.
    """
    from tqdm.auto import tqdm

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    manifest = root / "manifest.json"
    wanted = {"format_version": FORMAT_VERSION, "spec": spec.to_json()}
    if manifest.exists():
        found = json.loads(manifest.read_text())
        if found != wanted:
            raise ValueError(
                f"{root} holds another synthetic data set ({found['spec']}); "
                f"choose another directory or delete it"
            )
    params = true_parameters(spec)
    save_npz_atomic(root / "truth.npz", params)
    with atomic_path(manifest) as temporary:
        temporary.write_text(json.dumps(wanted, indent=2, sort_keys=True))
    total = sum(n for _, n in spec.num_items)
    with tqdm(total=total, desc=f"generating {root.name}", unit="seq", disable=not progress) as bar:
        for split, num_items in spec.num_items:
            for shard, start in enumerate(range(0, num_items, spec.shard_size)):
                count = min(spec.shard_size, num_items - start)
                path = shard_path(root, split, shard)
                if not path.exists():
                    write_parquet_durably(
                        sample_shard(spec, params, split, shard, start, count), path
                    )
                bar.update(count)
    return root


def read_manifest(root: str | os.PathLike) -> dict:
    path = Path(root) / "manifest.json"
    if not path.exists():
        raise FileNotFoundError(
            f"{path} does not exist: generate the data first "
            f"(python -m enumdist.data.synthetic --root {root})"
        )
    return json.loads(path.read_text())


def load_truth(root: str | os.PathLike) -> dict[str, np.ndarray]:
    """The true parameters the data of ``root`` were drawn from."""
    return load_npz(Path(root) / "truth.npz", required=())


def true_model(root: str | os.PathLike):
    """The zoo model (``HMM`` or ``FactorialHMM``) holding the true parameters, in float64."""
    import torch

    from enumdist.models import HMM, FactorialHMM

    spec = read_manifest(root)["spec"]
    cls = HMM if spec["model"] == "hmm" else FactorialHMM
    model = cls(num_keys=spec["num_keys"], hidden_dim=spec["hidden_dim"]).double()
    for name, value in load_truth(root).items():
        setattr(model, name, torch.as_tensor(value, dtype=torch.float64))
    return model


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True)
    parser.add_argument("--model", default="hmm", choices=sorted(MODELS))
    parser.add_argument("--num-train", type=int, default=10_000)
    parser.add_argument("--num-eval", type=int, default=1_000, help="items in valid and in test")
    parser.add_argument("--num-keys", type=int, default=88)
    parser.add_argument("--hidden-dim", type=int, default=8)
    parser.add_argument("--min-length", type=int, default=20)
    parser.add_argument("--max-length", type=int, default=200)
    parser.add_argument("--shard-size", type=int, default=1_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    spec = SyntheticSpec.of_sizes(
        args.num_train,
        args.num_eval,
        model=args.model,
        num_keys=args.num_keys,
        hidden_dim=args.hidden_dim,
        min_length=args.min_length,
        max_length=args.max_length,
        shard_size=args.shard_size,
        seed=args.seed,
    )
    print(generate(args.root, spec))


if __name__ == "__main__":
    main()
