"""`effml prune` / `effml quantize`: one JSON object with --json, the file written loads back, one-line errors."""

import json

import pytest
import torch

from effml.cli import main
from effml.compress import load_compressed
from effml.zoo import mlp


pytestmark = pytest.mark.usefixtures("one_thread")


def test_prune_json_and_checkpoint(tmp_path, capsys):
    out = tmp_path / "p.safetensors"
    rc = main(["prune", "--model", "effml.zoo:mlp", "--kind", "fine", "--sparsity", "0.9", "--hw", "none",
               "--rounds", "2", "--out", str(out), "--json"])
    assert rc == 0
    d = json.loads(capsys.readouterr().out)  # exactly one JSON object on stdout
    assert d["technique"] == "prune fine" and d["out"] == str(out)
    # 266,200 weights of which 10% kept in a 5-bit relative-index format with fp32 values: > 7x smaller
    assert d["before"]["fp32_bytes"] == 266_610 * 4 and d["size_ratio"] > 7
    assert d["after"]["nonzero"] == 266_610 - round(0.9 * 266_200)
    assert d["speed"]["measured"]["rounds"] == 2 and d["speed"]["predicted"] is None
    loaded = load_compressed(out, mlp())
    assert int(sum(torch.count_nonzero(p) for p in loaded.parameters())) == d["after"]["nonzero"]


def test_quantize_with_data_reports_accuracy(capsys):
    rc = main(["quantize", "--model", "effml.zoo:mlp", "--method", "kmeans", "--bits", "4", "--data", "digits",
               "--epochs", "1", "--test-limit", "100", "--hw", "none", "--no-measure", "--json"])
    assert rc == 0
    d = json.loads(capsys.readouterr().out)
    assert d["data"]["name"] == "digits" and d["data"]["test_size"] == 100
    assert 0 <= d["after"]["accuracy"] <= 1 and d["speed"]["measured"] is None
    # 4-bit indices + a 16-entry fp32 codebook per layer (3 layers) + fp32 biases (410)
    assert d["after"]["stored_bytes"] == -(-(266_200 * 4 + 3 * 16 * 32 + 410 * 32) // 8)


@pytest.mark.parametrize("argv, message", [
    (["prune", "--model", "effml.zoo:mlp", "--sparsity", "1.5"], "sparsity must be a fraction in [0, 1)"),
    (["prune", "--model", "effml.zoo:mlp", "--per-layer", "fc1=0.5"], "layer 'fc1' does not exist"),
    (["quantize", "--model", "effml.zoo:mlp", "--method", "linear", "--bits", "0"], "bits must be an integer >= 1"),
    (["prune", "--model", "effml.zoo:mlp", "--finetune-epochs", "1"], "need --data"),
    (["prune", "--model", "effml.zoo:mlp", "--lr", "nan"], "argument --lr: must be a finite number, got 'nan'"),
    (["prune", "--model", "effml.zoo:mlp", "--hw", "tpu9"], "--hw: unknown device 'tpu9'"),
    (["prune", "--model", "mlp", "--set", "hidden=0"], "--set hidden=0 for --model mlp"),
    (["quantize", "--model", "effml.zoo:mlp", "--qat-epochs=-1"], "argument --qat-epochs: must be a finite number >= 0"),
    (["prune", "--model", "effml.zoo:mlp", "--out", "/nonexistent-dir/m.safetensors"], "--out '/nonexistent-dir/m"),
])
def test_errors_are_one_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
