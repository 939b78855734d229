"""Fixtures shared by the test folders."""

import pytest


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory):
    """``synthetic_root(spec)``: the directory of a ground-truth data set
    (:mod:`enumdist.data.synthetic`) drawn from ``spec``, generated once per spec and session."""
    from enumdist.data.synthetic import generate

    made = {}

    def make(spec):
        if spec not in made:
            made[spec] = generate(
                tmp_path_factory.mktemp("synthetic") / spec.model, spec, progress=False
            )
        return made[spec]

    return make
