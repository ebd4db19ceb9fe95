"""bnrl installs as one package: the wheel adds ``bnrl`` (and its dist-info) and nothing else.

The repository's top-level folders are mapped into ``bnrl`` by ``pyproject.toml``; these tests
build the real wheel, install it with ``--no-deps`` into a fresh venv and look at what appeared
in site-packages, so a new top-level folder or module cannot slip into installs unnoticed.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w",
                           str(out), str(REPO)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (path,) = out.glob("bnrl-*.whl")
    return path


def test_wheel_holds_only_the_bnrl_package(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"bnrl", f"{wheel.name.split('-py')[0]}.dist-info"}
    for module in ("bnrl/__init__.py", "bnrl/__main__.py", "bnrl/run.py",
                   "bnrl/agents/sac.py", "bnrl/networks/batchnorm.py", "bnrl/envs/make.py",
                   "bnrl/training/loop.py", "bnrl/compare/grid.py", "bnrl/peers/sbx.py",
                   "bnrl/configs/Pendulum-v1.yaml"):
        assert module in names
    assert not [n for n in names if n.startswith(("bnrl/tests", "bnrl/benchmarks"))]


def test_fresh_venv_gets_bnrl_and_nothing_else(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path("
                                "'purelib'))"], capture_output=True, text=True,
                               check=True).stdout.strip())
    before = set(p.name for p in site.iterdir())
    # This interpreter's pip installs into the fresh venv's site-packages (it has no pip).
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q",
                           "--target", str(site), str(wheel)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    added = set(p.name for p in site.iterdir()) - before - {"bin"}
    assert {n for n in added if not n.endswith(".dist-info")} == {"bnrl"}
    assert len(added) == 2
    # Importing bnrl needs none of its dependencies, and only the bnrl name resolves.
    code = ("import bnrl, importlib.util; print(bnrl.__version__); "
            "print([m for m in ('agents', 'envs', 'networks', 'training', 'compare', 'configs',"
            " 'run') if importlib.util.find_spec(m)])")
    proc = subprocess.run([str(python), "-c", code], capture_output=True, text=True,
                          cwd=tmp_path, check=True)
    version, shadowed = proc.stdout.split("\n")[:2]
    assert version == wheel.name.split("-")[1] and shadowed == "[]"
