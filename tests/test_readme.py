"""The README's ten-line example runs and recovers the two clusters."""

import pathlib
import re

import pyro
import torch


def test_readme_example_runs():
    readme = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()
    code = re.search(r"## Ten lines\n\n```python\n(.*?)```", readme, re.S).group(1)
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)
    labels, data = namespace["labels"].reshape(-1), namespace["data"]
    assert labels.shape == data.shape
    left, right = labels[:50], labels[50:]
    assert torch.mode(left).values != torch.mode(right).values
    locs = pyro.param("locs").detach()
    assert locs[torch.mode(left).values] < locs[torch.mode(right).values]
