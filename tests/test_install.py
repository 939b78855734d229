"""What a user gets from ``pip install``: the declared dependencies, an engine that needs only
torch and pyro-ppl, and (slow) a built wheel that trains and decodes outside the checkout."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import sysconfig
import textwrap
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]

# import name -> distribution that provides it (third-party imports of enumdist/ only)
DISTRIBUTION = {
    "torch": "torch",
    "pyro": "pyro-ppl",
    "numpy": "numpy",
    "opt_einsum": "opt_einsum",
    "pytorch_lightning": "pytorch-lightning",
    "lightning_fabric": "pytorch-lightning",
    "hydra": "hydra-core",
    "omegaconf": "hydra-core",
    "tqdm": "tqdm",
    "matplotlib": "matplotlib",
    "pyarrow": "pyarrow",
    "wandb": "wandb",
    "submitit": "hydra-submitit-launcher",
    "hydra_plugins": "hydra-submitit-launcher",
    "music21": "music21",
    "sklearn": "scikit-learn",
    "scipy": "scipy",
}
# tqdm comes with pyro-ppl itself; the pipeline declares it because the decoding stage imports it
OPTIONAL = sorted(set(DISTRIBUTION) - {"torch", "pyro", "numpy", "opt_einsum", "tqdm"})


def requirement_names(requirements: list[str]) -> set[str]:
    return {
        r.split(";")[0].split("[")[0].split("<")[0].split(">")[0].split("=")[0].strip().lower()
        for r in requirements
    }


def third_party_imports() -> set[str]:
    stdlib = set(sys.stdlib_module_names)
    names = set()
    for path in (ROOT / "enumdist").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names - stdlib - {"enumdist", "__future__"}


def test_core_dependencies_are_torch_and_pyro_and_what_they_import():
    assert requirement_names(PYPROJECT["dependencies"]) == {
        "torch",
        "pyro-ppl",
        "numpy",
        "opt_einsum",
    }
    torch_range = next(r for r in PYPROJECT["dependencies"] if r.startswith("torch"))
    assert "<3" in torch_range and "==" not in torch_range and "<=" not in torch_range


def test_every_import_of_the_package_is_declared_in_dependencies_or_extras():
    imports = third_party_imports()
    unknown = imports - set(DISTRIBUTION)
    assert not unknown, f"add {sorted(unknown)} to DISTRIBUTION and to pyproject.toml"
    extras = PYPROJECT["optional-dependencies"]
    declared = requirement_names(PYPROJECT["dependencies"]).union(
        *map(requirement_names, extras.values())
    )
    assert {DISTRIBUTION[name] for name in imports} <= declared
    assert {"pipeline", "wandb", "slurm", "data", "dev", "test", "all"} <= set(extras)
    assert requirement_names(extras["pipeline"]) >= {"pytorch-lightning", "hydra-core", "pyarrow"}
    assert "wandb" not in requirement_names(extras["pipeline"])  # wandb is its own extra


BLOCK_OPTIONAL = textwrap.dedent(f"""
    import importlib.abc, sys
    BLOCKED = {OPTIONAL!r}
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{{name}} is blocked: not a core dependency")
    sys.meta_path.insert(0, Block())
""")


def test_engine_and_models_need_only_torch_and_pyro():
    script = BLOCK_OPTIONAL + textwrap.dedent("""
        import torch, pyro, pyro.distributions as dist
        import enumdist, enumdist.models
        def model(data):
            with pyro.plate("data", len(data)):
                z = pyro.sample("z", dist.Categorical(torch.ones(2) / 2), infer={"enumerate": "parallel"})
                pyro.sample("x", dist.Normal(torch.tensor([-1.0, 1.0])[z], 1.0), obs=data)
        loss = enumdist.EnumELBO(max_plate_nesting=1).loss(model, lambda data: None, torch.zeros(3))
        enumdist.infer_discrete(model, first_available_dim=-2)(torch.zeros(3))
        loaded = sorted({m.split(".")[0] for m in sys.modules} & set(BLOCKED))
        print("loss", loss, "loaded", loaded)
    """)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "loaded []" in result.stdout


# ------------------------------------------------------------------------------- the wheel
def build_wheel(out: Path) -> Path:
    """Build from a copy of exactly what the sdist needs, so the checkout stays clean and only
    declared package data can end up in the wheel."""
    source = out / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        (source / name).write_bytes((ROOT / name).read_bytes())
    subprocess.run(["cp", "-r", str(ROOT / "enumdist"), str(source / "enumdist")], check=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(out / "dist"),
            str(source),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return next((out / "dist").glob("enumdist-*.whl"))


def fresh_venv(where: Path) -> Path:
    """A new venv that sees this interpreter's packages (torch, pyro, ...: nothing downloaded)
    through a ``.pth`` file, but not enumdist itself, which the test installs from the wheel.
    Without its own pip/setuptools: the host's (newer) ones serve it, installing into it."""
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(where)], check=True, timeout=120
    )
    view = where / "host-packages"
    view.mkdir()
    host = Path(sysconfig.get_paths()["purelib"])
    for entry in host.iterdir():
        if (
            not entry.name.lower().startswith(("enumdist", "__editable__"))
            and entry.suffix != ".pth"
        ):
            (view / entry.name).symlink_to(entry)
    purelib = next((where / "lib").glob("python*/site-packages"))
    (purelib / "host-packages.pth").write_text(f"{view}\n")
    return where / "bin" / "python"


USER_EXPERIMENT = """\
# @package _global_
# a user's own experiment: the packaged iris mixture with their own sizes
defaults:
  - override /data: iris
  - override /model: gaussian_mixture
model:
  num_features: 4
  num_components: 2
hydra:
  job:
    name: my_mixture
"""


@pytest.mark.slow
def test_wheel_installs_trains_and_decodes_outside_the_checkout(tmp_path):
    wheel = build_wheel(tmp_path)
    names = zipfile.ZipFile(wheel).namelist()
    assert {
        "enumdist/conf/train.yaml",
        "enumdist/conf/decode.yaml",
        "enumdist/conf/experiment/chorale_hmm.yaml",
    } <= set(names)
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)

    python = fresh_venv(tmp_path / "venv")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env |= {
        "OMP_NUM_THREADS": "1",
        "WANDB_MODE": "offline",
        "MPLBACKEND": "Agg",
        "PATH": f"{python.parent}:{env['PATH']}",
    }
    work = tmp_path / "elsewhere"
    (work / "my_conf" / "experiment").mkdir(parents=True)
    (work / "my_conf" / "experiment" / "my_mixture.yaml").write_text(USER_EXPERIMENT)

    def run(*command: str, timeout: float = 300) -> str:
        result = subprocess.run(
            command, cwd=work, env=env, capture_output=True, text=True, timeout=timeout
        )
        assert result.returncode == 0, (
            f"{command}\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
        )
        return result.stdout

    # pip resolves the extras against the packages it sees, offline: nothing is downloaded
    run(str(python), "-m", "pip", "install", "-q", "--no-index", f"{wheel}[pipeline,data]")
    where = run(str(python), "-c", "import enumdist; print(enumdist.__file__)")
    assert where.startswith(str(tmp_path / "venv")), where

    composed = run(
        str(python), "-m", "enumdist.train", "--cfg", "job", "experiment=python_docs_topics"
    )
    assert "enumdist.models.TopicModel" in composed
    run_dir = work / "run"
    trained = run(
        "enumdist-train",
        "--config-dir",
        str(work / "my_conf"),
        "experiment=my_mixture",
        "logger=csv",
        "trainer.max_steps=5",
        "trainer.check_val_every_n_epoch=1",
        f"paths.run_dir={run_dir}",
    )
    assert "test loss per observation" in trained
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert "num_components: 2" in (run_dir / ".hydra" / "config.yaml").read_text()
    assert "decode_batch_size: 32" in run("enumdist-decode", "--help")
    decoded = run("enumdist-decode", f"run_dir={run_dir}", "progress=false", "pictures=false")
    assert (run_dir / "decoded" / "test-temperature0" / "decoded.parquet").is_file()
    assert "decoded:" in decoded
