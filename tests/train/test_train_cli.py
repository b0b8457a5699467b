"""`effml train-mem` and `effml train` end to end: JSON keys and numbers, fit advice, one-line errors."""

import json

import pytest

from effml.cli import main


def run_json(capsys, *argv) -> dict:
    assert main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)  # exactly one JSON object on stdout


def test_train_mem_zoo_model_fits_here(capsys):
    d = run_json(capsys, "train-mem", "--model", "effml.zoo:mlp", "--batch", "32", "--precision", "fp32")
    est = d["estimate"]
    assert est["params"] == 266_610
    rows = {r["part"]: r for r in est["rows"]}
    assert rows["weights"]["bytes"] == 4 * 266_610 and rows["gradients"]["bytes"] == 4 * 266_610
    assert est["peak_bytes"] == pytest.approx(sum(r["at_peak_bytes"] for r in est["rows"]))  # parts sum to peak
    assert d["fit"]["fits"] and d["fit"]["target"]["local"] and d["fit"]["suggestion"] is None


def test_train_mem_suggests_the_smallest_change(capsys):
    # tiny GPT at micro-batch 4096 x 128 tokens: ~16 BTC x 2-4 B per block is ~17 GB of activations, more than the
    # Jetson Orin Nano's 8 GB. With one device there is no ZeRO to try, so checkpointing comes first.
    d = run_json(capsys, "train-mem", "--model", "effml.zoo:tiny_gpt", "--input-shape", "1,128", "--batch", "4096",
                 "--precision", "bf16-mixed", "--hw", "jetson-orin-nano-8gb")
    fit = d["fit"]
    assert not fit["fits"] and fit["suggestion"]["fits"]
    assert fit["suggestion"]["peak_bytes"] <= fit["target"]["capacity_bytes"] == 8e9
    assert fit["tried"][-1] == fit["suggestion"]  # the search stops at the first change that fits
    assert fit["tried"][0]["flags"] == "--checkpointing"  # tried first: no ZeRO without more devices


def test_train_mem_table(capsys):
    assert main(["train-mem", "--model", "effml.zoo:lenet5", "--batch", "8", "--no-suggest"]) == 0
    out = capsys.readouterr().out
    assert "optimizer states" in out and "fits on this machine" in out


@pytest.mark.parametrize("argv, message", [
    (["train-mem", "--model", "effml.zoo:mlp", "--world-size", "0"], "argument --world-size: must be an integer > 0, got '0'"),
    (["train-mem", "--model", "effml.zoo:mlp", "--precision", "bf16-mixed", "--hw", "t4"],
     "precision 'bf16-mixed' computes in bf16, which T4 lacks"),
    (["train-mem", "--model", "effml.zoo:mlp", "--precision", "fp16-mixed"], "precision 'fp16-mixed' needs a CUDA GPU"),
    (["train-mem", "--model", "effml.zoo:mlp", "--precision", "fp16-mixed", "--hw", "rpi5"],
     "needs a CUDA GPU (fp16 autocast + GradScaler), but Raspberry Pi 5"),
    (["train-mem", "--model", "effml.zoo:tiny_gpt", "--input-shape", "1,16", "--checkpointing", "modules:blocks.7"],
     "checkpointing target 'blocks.7' is not a module name of GPT"),
    (["train-mem", "--model", "effml.zoo:mlp", "--zero", "2"], "zero_stage=2 shards across devices"),
    (["train", "--nproc", "0"], "argument --nproc: must be an integer > 0, got '0'"),
    (["train", "--lr", "nan"], "argument --lr: must be a finite number, got 'nan'"),
    (["train", "--lr=-1e-3"], "argument --lr: must be a finite number > 0, got '-1e-3'"),
    (["train", "--model", "mlp", "--seq", "64"], "--seq does not apply to mlp"),
    (["train", "--model", "lenet5", "--set", "width=0"], "--set width=0 for --model lenet5: must be > 0"),
    (["train", "--model", "torch.nn:Identity"], "--model 'torch.nn:Identity' has no zoo entry"),
    (["train", "--model", "mlp", "--precision", "fp16-mixed"], "precision 'fp16-mixed' needs a CUDA GPU"),
    (["train", "--model", "gpt5"], "--model 'gpt5' is not a known zoo model name"),
    (["train", "--set", "n_layer"], "--set 'n_layer' must look like KEY=VALUE"),
])
def test_bad_input_gives_one_line_error(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err


def test_train_json(capsys):
    d = run_json(capsys, "train", "--model", "mlp", "--steps", "3", "--warmup", "1", "--batch", "16",
                 "--grad-accum", "2", "--checkpointing", "sqrt")
    assert d["config"]["global_batch"] == 32 and len(d["losses"]) == 3
    assert d["tokens_per_s"] is None and d["samples_per_s"] > 0
    assert abs(d["estimate_error"]) < 0.01 and d["measured"]["method"] == "cpu allocator (profiler)"
