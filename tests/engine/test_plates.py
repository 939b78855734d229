"""The plate back end is chosen in one place (engine/plates.py) for every entry point."""

import re
from pathlib import Path

import pytest

import enumdist
from enumdist.engine.plates import LOCAL, LocalShardCheck, plates_for

PACKAGE = Path(enumdist.__file__).parent


def test_one_factory_picks_the_back_end():
    assert plates_for() is LOCAL and plates_for(()) is LOCAL
    checked = plates_for(["data"])  # torch.distributed is not running: one process
    assert isinstance(checked, LocalShardCheck) and checked.shard_plates == ("data",)
    assert not checked.sharded and checked.average_gradients([]) == 0


def test_the_sharded_back_end_is_built_in_one_place():
    sources = {path: path.read_text() for path in PACKAGE.rglob("*.py")}
    built = [
        path.relative_to(PACKAGE)
        for path, text in sources.items()
        if re.search(r"(?<!class )ShardedPlates\(", text)
    ]
    assert built == [Path("engine/plates.py")]


def test_the_sharded_back_end_refuses_an_unknown_adjoint():
    from enumdist.engine.sharding import ShardedPlates

    with pytest.raises(ValueError, match="adjoint"):
        ShardedPlates.__init__(object.__new__(ShardedPlates), ["data"], adjoint="mean")
