"""`effml profile` end to end: tables, --json keys, and one-line errors for bad input."""

import json
import subprocess
import sys

import pytest

from effml.cli import main


def run_json(capsys, *argv) -> dict:
    assert main(["profile", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)  # exactly one JSON object on stdout


def test_json_has_the_documented_keys(capsys):
    d = run_json(capsys, "--model", "effml.zoo:lenet5", "--input-shape", "1,1,28,28")
    for key in ("params", "flops", "macs", "bytes", "memory", "peak_activation_bytes", "by_op", "by_module",
                "unsupported"):
        assert key in d
    assert d["params"] == 61_706
    assert d["macs"] == 416_520  # conv1 117600 + conv2 240000 + fc 48000 + 10080 + 840
    assert d["memory"]["fp32"] == 4 * 61_706 and d["memory"]["int4"] == 30_853
    assert d["by_module"]["features.0"]["macs"] == 117_600


def test_json_config_backward_and_batch(capsys):
    d = run_json(capsys, "--config", "gpt2", "--seq", "32", "--batch", "2", "--backward")
    assert d["params"] == 124_439_808
    fwd, bwd = d["phases"]["forward"], d["phases"]["backward"]
    assert 1.9 < bwd["macs"] / fwd["macs"] <= 2.0  # ≈ 2x: no input gradient for the token embedding


def test_table_output(capsys):
    assert main(["profile", "--model", "effml.zoo:mlp", "--by", "op"]) == 0
    out = capsys.readouterr().out
    assert "aten.addmm" in out and "266,610" in out


@pytest.mark.parametrize("argv, message", [
    (["--config", "llama-9-7b"], "unknown model config 'llama-9-7b'"),
    (["--model", "effml.zoo:lenet5", "--input-shape", "1,x,28"], "--input-shape '1,x,28' is not a comma-separated"),
    (["--model", "effml.zoo:lenet5", "--input-shape", "1,3,28,28"], "module 'features.0' (Conv2d) raised"),
    (["--model", "effml.zoo:nonexistent"], "has no attribute 'nonexistent'"),
    (["--model", "effml.zoo:lenet5", "--dtype", "fp13"], "unknown dtype 'fp13'"),
])
def test_bad_input_gives_one_line_error(capsys, argv, message):
    assert main(["profile", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err


def test_installed_command_prints_no_traceback():
    r = subprocess.run([sys.executable, "-m", "effml.cli", "profile", "--config", "no-such-model"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.startswith("effml profile: error: unknown model config 'no-such-model'")
    assert "Traceback" not in r.stderr
