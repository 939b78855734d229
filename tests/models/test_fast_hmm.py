"""VectorisedHMM is the HMM: same loss and gradients as the python-loop model (float64)."""

import warnings

import torch

import enumdist
from enumdist.models import HMM
from enumdist.models.fast_hmm import VectorisedHMM


def test_vectorised_hmm_equals_the_loop_hmm():
    generator = torch.Generator().manual_seed(0)
    sequences = (torch.rand(6, 9, 5, generator=generator) < 0.3).double()
    lengths = torch.tensor([9, 3, 7, 1, 9, 5])
    sequences[torch.arange(9)[None, :] >= lengths[:, None]] = 0
    batch = {
        "sequences": sequences,
        "lengths": lengths,
        "index": torch.tensor([0, 2, 4, 6, 8, 10]),
        "num_total": 12,
    }
    loop, fast = (
        HMM(num_keys=5, hidden_dim=3).double(),
        VectorisedHMM(num_keys=5, hidden_dim=3).double(),
    )
    fast.load_state_dict(loop.state_dict())
    elbo = enumdist.EnumELBO(max_plate_nesting=2)
    losses, grads = [], []
    for model in (loop, fast):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the vectorised model enumerates nothing
            loss = elbo.differentiable_loss(model.model, lambda batch: None, batch)
        losses.append(loss)
        grads.append(torch.autograd.grad(loss, list(model.parameters())))
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-10, atol=0)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)
