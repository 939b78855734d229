"""Splitting one long sequence by time: contiguous, covering, nearly equal blocks."""

import itertools

import pytest
import torch

from enumdist.data.long_chain import split_by_time, synthetic_long_chain, time_block


@pytest.mark.parametrize("steps,world", [(10, 3), (9, 3), (5, 5), (1_000_001, 2)])
def test_blocks_cover_the_steps_in_order(steps, world):
    blocks = [time_block(steps, r, world) for r in range(world)]
    assert blocks[0].start == 0 and blocks[-1].stop == steps
    assert all(a.stop == b.start for a, b in itertools.pairwise(blocks))
    sizes = [b.stop - b.start for b in blocks]
    assert max(sizes) - min(sizes) <= 1 and min(sizes) >= 1


def test_split_by_time_is_a_view_of_the_block():
    y = torch.arange(20.0).reshape(2, 10)
    part = split_by_time(y, 1, 3)
    assert torch.equal(part, y[:, 4:7]) and part.data_ptr() == y[:, 4:].data_ptr()


def test_too_few_steps_raise():
    with pytest.raises(ValueError, match="at least one step"):
        time_block(2, 0, 3)


def test_synthetic_chain_follows_its_parameters():
    params, y = synthetic_long_chain(20_000, 3, seed=1)
    assert y.shape == (1, 20_000)
    # each observation is its state's mean plus unit noise: the three means show in the data
    nearest = (y.reshape(-1, 1) - params["loc"]).abs().argmin(-1)
    assert set(nearest.unique().tolist()) == {0, 1, 2}
