"""`effml nas` through the CLI: the rendered front (nas/present.py) and a raising user proxy named."""

import pytest

from effml.cli import main

pytest.importorskip("optuna")  # the `nas` extra; effml nas says which extra to install without it


def test_table_output(tmp_path, capsys):
    argv = ["nas", "--trials", "2", "--proxy", "cli_user_models:constant_proxy", "--store", str(tmp_path / "r.db")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "2 evaluated" in out and "Pareto front: proxy accuracy vs latency on stm32f746" in out
    assert "50.0%" in out  # the constant proxy's accuracy, shown as a percentage


def test_raising_proxy_is_named(tmp_path, capsys):
    argv = ["nas", "--trials", "1", "--proxy", "cli_user_models:broken_proxy", "--store", str(tmp_path / "r.db")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err == "effml nas: error: --proxy cli_user_models:broken_proxy raised RuntimeError: proxy exploded"
