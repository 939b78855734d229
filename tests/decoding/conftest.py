import pytest
from decoding_run_dirs import make_run_dir


@pytest.fixture
def hmm_run(tmp_path):
    return make_run_dir(tmp_path)
