"""One long sequence split by time across ranks, and a synthetic long chain to test it on.

- :func:`time_block` -- the contiguous steps rank ``r`` of ``W`` holds (nearly equal blocks,
  the first ``T mod W`` one step longer), the split :class:`enumdist.engine.time_sharding.
  TimeShardedChain` expects;
- :func:`split_by_time` -- that block of a tensor's time dim (a view, no copy);
- :func:`synthetic_long_chain` -- observations drawn from a known Gaussian-emission HMM;
- :func:`synthetic_long_chain_split` and :func:`chorales_as_one_sequence` -- one split as one
  long sequence ``{"observations": [1, T, ...]}``, the loaders of
  :class:`enumdist.pipeline.time_split.TimeSplitDataModule` (``experiment=long_chain``,
  ``experiment=chorales_long``).
"""

from __future__ import annotations

import torch


def time_block(steps: int, rank: int, world_size: int) -> slice:
    """Steps ``start:stop`` of rank ``rank``; every rank gets at least one step."""
    if not 0 <= rank < world_size or steps < world_size:
        raise ValueError(
            f"cannot split {steps} steps over {world_size} ranks for rank {rank}: "
            f"every rank needs at least one step"
        )
    base, extra = divmod(steps, world_size)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (rank < extra))


def split_by_time(tensor: torch.Tensor, rank: int, world_size: int, dim: int = 1) -> torch.Tensor:
    """This rank's block of ``tensor`` along its time dim ``dim`` (a view)."""
    block = time_block(tensor.shape[dim], rank, world_size)
    return tensor.narrow(dim, block.start, block.stop - block.start)


def synthetic_long_chain(
    steps: int,
    num_states: int,
    num_sequences: int = 1,
    seed: int = 0,
    dtype=torch.float64,
    draw_seed: int | None = None,
):
    """``(params, y)``: known ``init [S]``, ``trans [S, S]`` logits (sticky) and Normal emission
    means ``loc [S]`` (unit scale), and ``y [N, T]`` sampled from that HMM. ``seed`` fixes the
    parameters; ``draw_seed`` (default ``seed``) the draws, so several chains share one truth."""
    import numpy as np

    g = torch.Generator().manual_seed(seed)
    init = torch.zeros(num_states, dtype=dtype)
    trans = torch.randn(num_states, num_states, generator=g, dtype=dtype) + 4 * torch.eye(
        num_states, dtype=dtype
    )
    loc = torch.linspace(-2 * num_states**0.5, 2 * num_states**0.5, num_states, dtype=dtype)
    # x_{-1} ~ init, x_t ~ trans[x_{t-1}] by inverse-CDF draws; a python loop over numpy
    # scalars (a torch op per step would cost several times more at 10^6 steps)
    draw_seed = seed if draw_seed is None else draw_seed
    g = torch.Generator().manual_seed(draw_seed)
    rng = np.random.default_rng(draw_seed)
    cdf = trans.softmax(-1).cumsum(-1).numpy()
    first = init.softmax(-1).cumsum(-1).numpy()
    u = rng.random((num_sequences, steps + 1))
    x = np.empty((num_sequences, steps), dtype=np.int64)
    for n in range(num_sequences):
        state = min(int(np.searchsorted(first, u[n, 0])), num_states - 1)
        rows, draws, out = cdf, u[n, 1:], x[n]
        for t in range(steps):
            state = min(int(rows[state].searchsorted(draws[t])), num_states - 1)
            out[t] = state
    x = torch.from_numpy(x)
    y = loc[x] + torch.randn(num_sequences, steps, generator=g, dtype=dtype)
    return {"init": init, "trans": trans, "loc": loc}, y


#: draw seeds of the synthetic splits, offset from the parameters' seed (one truth, three chains)
SPLIT_DRAWS = {"train": 0, "valid": 1, "test": 2}


def synthetic_long_chain_split(
    split: str,
    steps: int,
    num_states: int,
    seed: int = 0,
    eval_steps: int | None = None,
    dtype: str = "float64",
) -> dict[str, torch.Tensor]:
    """One split of the synthetic long chain: ``{"observations": [1, T]}``; every split is its
    own chain from the same known parameters (``synthetic_long_chain(..., seed)``), ``steps``
    long for ``train`` and ``eval_steps`` (default ``steps // 10``, at least 2) for the others."""
    if split not in SPLIT_DRAWS:
        raise ValueError(f"split must be one of {sorted(SPLIT_DRAWS)}, got {split!r}")
    length = steps if split == "train" else (eval_steps or max(steps // 10, 2))
    _, y = synthetic_long_chain(
        length,
        num_states,
        seed=seed,
        dtype=getattr(torch, dtype),
        draw_seed=seed * len(SPLIT_DRAWS) + SPLIT_DRAWS[split] + 1,
    )
    return {"observations": y}


def chorales_as_one_sequence(split: str, **load_kwargs) -> dict[str, torch.Tensor]:
    """One split of the Bach chorales (:func:`enumdist.data.chorales.load_chorales`, same
    keyword arguments) as one sequence: the chorales' real steps end to end, in the split's
    file-name order, ``{"observations": [1, sum(lengths), 88]}``."""
    from enumdist.data.chorales import load_chorales

    rolls = load_chorales(split, **load_kwargs)
    steps = torch.arange(rolls.sequences.shape[1])
    real = steps < rolls.lengths.unsqueeze(-1)  # [N, T_max]: rows in order, padding dropped
    return {"observations": rolls.sequences[real].unsqueeze(0)}
