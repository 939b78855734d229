"""The blocked Viterbi equals chain_map (float64, continuous random data: no ties)."""

import pytest
import torch

from enumdist.engine.blocked_viterbi import blocked_chain_map, max_block_matrices, max_product
from enumdist.engine.chain import chain_map


@pytest.mark.parametrize("time_varying", [False, True], ids=["homogeneous", "time_varying"])
@pytest.mark.parametrize("steps,block", [(1, None), (2, None), (37, 5), (300, None), (64, 63)])
def test_equals_chain_map(time_varying, steps, block):
    torch.manual_seed(steps)
    n, s = 4, 3
    init = torch.randn(s)
    trans = torch.randn(*((steps,) if time_varying else ()), s, s)
    emissions = torch.randn(n, steps, s)
    lengths = torch.tensor([steps, max(1, steps // 2), 1, max(1, steps - 3)])
    expected = chain_map(init, trans, emissions, lengths)
    actual = blocked_chain_map(init, trans, emissions, lengths, block=block)
    assert torch.equal(actual, expected)


def test_block_matrices_are_max_plus_products_of_the_steps():
    torch.manual_seed(0)
    n, t, s = 2, 7, 3
    trans, emissions = torch.randn(t, s, s), torch.randn(n, t, s)
    valid = torch.ones(n, t, dtype=torch.bool)
    blocks = max_block_matrices(trans, emissions, valid, block=3)  # steps 1-3, 4-6
    for b, steps in enumerate([range(1, 4), range(4, 7)]):
        x = None
        for step in steps:
            m = trans[step] + emissions[:, step].unsqueeze(-2)
            x = m if x is None else max_product(x, m)
        torch.testing.assert_close(blocks[b], x)
