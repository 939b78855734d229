"""Decoding a run directory instantiates only allowlisted ``_target_``s of its saved config: a
config naming ``torch.load`` of a malicious pickle is refused before any call."""

import re
import sys

import pytest
import torch
from decoding_run_dirs import make_run_dir
from omegaconf import OmegaConf

from enumdist.decoding import run_decoding
from enumdist.pipeline import targets
from enumdist.pipeline.targets import UntrustedTargetError

OPTIONS = {"progress": False, "pictures": False}


class CreatesFile:
    """Unpickling this calls ``open(marker, "w")``: the file appears iff the pickle ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def edit_config(run_dir, key, value):
    path = run_dir / ".hydra" / "config.yaml"
    cfg = OmegaConf.load(path)
    OmegaConf.update(cfg, key, value, merge=False)
    OmegaConf.save(cfg, path)


@pytest.mark.parametrize(
    "key, node",
    [
        ("model", {"_target_": "torch.load", "_args_": ["{evil}"], "weights_only": False}),
        (
            "model",
            {
                "_target_": "enumdist.models.base.torch.load",
                "_args_": ["{evil}"],
                "weights_only": False,
            },
        ),
        ("data.load", {"_target_": "torch.load", "_args_": ["{evil}"], "weights_only": False}),
        ("guide", {"_target_": "builtins.eval", "_args_": ["open('{marker}', 'w')"]}),
    ],
    ids=["model", "attribute-path-through-the-package", "nested-data-loader", "eval"],
)
def test_a_planted_target_is_refused_and_never_runs(tmp_path, key, node):
    run_dir, _ = make_run_dir(tmp_path)
    marker, evil = tmp_path / "pwned", tmp_path / "evil.pt"
    torch.save(CreatesFile(marker), evil)
    node = {
        k: ([a.format(evil=evil, marker=marker) for a in v] if isinstance(v, list) else v)
        for k, v in node.items()
    }
    edit_config(run_dir, key, node)
    with pytest.raises(
        UntrustedTargetError, match=re.escape(f"allowlist: {key}._target_={node['_target_']!r}")
    ):
        run_decoding(run_dir, OPTIONS)
    assert not marker.exists(), "the payload ran"


def test_a_path_outside_the_package_is_never_imported(tmp_path, monkeypatch):
    (tmp_path / "planted_module_xyz.py").write_text(f"open({str(tmp_path / 'pwned')!r}, 'w')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert not targets.is_allowed("planted_module_xyz.run")
    assert "planted_module_xyz" not in sys.modules and not (tmp_path / "pwned").exists()


def test_package_targets_pass_and_user_classes_pass_once_registered(tmp_path, monkeypatch):
    assert targets.is_allowed("enumdist.models.HMM") and targets.is_allowed(
        "enumdist.pipeline.guides.auto"
    )
    assert not targets.is_allowed("torch.load") and not targets.is_allowed(
        "enumdist.models.base.torch.load"
    )
    run_dir, _ = make_run_dir(tmp_path)
    edit_config(run_dir, "data.load._target_", "decoding_run_dirs.load_saved_copy")
    with pytest.raises(
        UntrustedTargetError, match="ENUMDIST_ALLOW_TARGETS=decoding_run_dirs.load_saved_copy"
    ):
        run_decoding(run_dir, OPTIONS)
    monkeypatch.setenv("ENUMDIST_ALLOW_TARGETS", "decoding_run_dirs.load_saved_copy")
    assert run_decoding(run_dir, OPTIONS)["decoded"].is_file()
    monkeypatch.delenv("ENUMDIST_ALLOW_TARGETS")
    monkeypatch.setattr(targets, "_registered", set())
    targets.register("decoding_run_dirs.load_saved_copy")
    assert targets.is_allowed("decoding_run_dirs.load_saved_copy")
