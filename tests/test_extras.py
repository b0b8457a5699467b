"""effml.extras.require: an optional package that is missing is one line naming the extra that installs it."""

import sys

import pytest

from effml.errors import EffmlError
from effml.extras import EXTRAS, MissingExtra, has, missing_message, require


def test_present_module_is_returned():
    import json

    assert require("json", extra="report") is json
    assert has("json") and not has("effml_no_such_module_xyz")


def test_missing_module_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)  # `import optuna` now raises ModuleNotFoundError
    with pytest.raises(MissingExtra) as e:
        require("optuna", extra="nas")
    assert isinstance(e.value, EffmlError)
    msg = str(e.value)
    assert msg == "neural architecture search needs the optional package 'optuna', which is not installed: " \
                  "pip install 'effml[nas]'"
    assert "\n" not in msg


def test_submodule_and_distribution_name():
    # a submodule of a missing package is reported by its distribution name (import psycopg2, pip psycopg2-binary)
    assert "'psycopg2-binary'" in missing_message("psycopg2.extras", "postgres")
    with pytest.raises(MissingExtra, match=r"pip install 'effml\[report\]'"):
        require("effml_no_such_module_xyz.graph_objects", extra="report")


def test_import_error_inside_an_installed_package_is_not_hidden(tmp_path, monkeypatch):
    (tmp_path / "effml_broken_pkg.py").write_text("import effml_no_such_dependency_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError) as e:
        require("effml_broken_pkg", extra="onnx")
    assert not isinstance(e.value, MissingExtra) and e.value.name == "effml_no_such_dependency_xyz"


def test_unknown_extra_is_refused():
    with pytest.raises(ValueError, match="unknown extra 'gpu'"):
        require("json", extra="gpu")
    assert set(EXTRAS) == {"llm", "nas", "report", "onnx", "postgres"}


def test_cli_nas_without_optuna_is_one_line(monkeypatch, capsys):
    from effml.cli import main

    monkeypatch.setitem(sys.modules, "optuna", None)
    assert main(["nas"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.endswith("pip install 'effml[nas]'"), err


def test_extras_match_pyproject():
    import tomllib
    from pathlib import Path

    meta = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
    assert set(meta["optional-dependencies"]) - {"dev", "all"} == set(EXTRAS)
    # torch is a range, never a pin: effml installs beside the user's torch
    (torch_req,) = [d for d in meta["dependencies"] if d.startswith("torch")]
    assert torch_req == "torch>=2.6,<3"
