"""Only rank 0 speaks: one logger, plain lines on stdout, silent on every other rank."""

import logging

import pytest

from enumdist.pipeline.checkpoint_files import resolve_ckpt_path, save_checkpoint
from enumdist.rank_zero import RANK_VARIABLES, get_logger, global_rank

log = get_logger(__name__)


@pytest.fixture
def single_process(monkeypatch):
    for name in RANK_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_rank_zero_prints_plain_lines_to_stdout(single_process, capsys):
    assert global_rank() == 0
    log.info("run directory: /somewhere")
    get_logger("__main__").info("from a script")  # python -m enumdist.<entry point>
    captured = capsys.readouterr()
    assert captured.out == "run directory: /somewhere\nfrom a script\n" and captured.err == ""


@pytest.mark.parametrize("variable", RANK_VARIABLES)
def test_other_ranks_are_silent_whichever_launcher_set_the_rank(single_process, capsys, variable):
    single_process.setenv(variable, "1")
    assert global_rank() == 1
    log.info("run directory: /somewhere")
    assert capsys.readouterr().out == ""


def test_messages_do_not_reach_the_root_logger_twice(single_process, capsys):
    root = logging.getLogger()
    handler = logging.StreamHandler()  # as Hydra's job logging adds one, with its own prefix
    root.addHandler(handler)
    try:
        log.info("once")
    finally:
        root.removeHandler(handler)
    captured = capsys.readouterr()
    assert captured.out == "once\n" and "once" not in captured.err


def test_resuming_is_announced_by_rank_zero_only(single_process, tmp_path, capsys):
    save_checkpoint(
        {"state_dict": {}, "global_step": 7, "epoch": 0}, tmp_path / "checkpoints" / "step7.ckpt"
    )
    found = resolve_ckpt_path("last", tmp_path)
    assert capsys.readouterr().out == f"ckpt_path=last: resuming from {found}\n"
    single_process.setenv("RANK", "1")
    assert resolve_ckpt_path("last", tmp_path) == found
    assert capsys.readouterr().out == ""
