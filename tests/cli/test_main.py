"""The `effml` entry point: --version, one stderr line + exit 2 for a bad command line, unknown devices,
options that do not apply, output paths checked before work, --json without NaN/Infinity."""

import hashlib
import importlib.metadata
import json
import os
import subprocess
import sys

import pytest

from effml.cli import main


def one_line_error(capsys, argv) -> str:
    assert main(argv) == 2, argv
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_version_is_the_package_metadata(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"effml {importlib.metadata.version('effml')}"


def test_installed_version_command():
    r = subprocess.run([sys.executable, "-m", "effml.cli", "--version"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == f"effml {importlib.metadata.version('effml')}"


@pytest.mark.parametrize("argv, text", [
    (["profile", "--model", "lenet5", "--batch", "0"],
     "effml profile: error: argument --batch: must be an integer > 0"),
    (["profile", "--model", "lenet5", "--depth=-1"], "argument --depth: must be an integer >= 0, got '-1'"),
    (["predict", "--config", "gpt2", "--hw", "h100", "--price=-2"], "argument --price: must be a finite number > 0"),
    (["predict", "--config", "gpt2", "--hw", "h100", "--kv-len=-1"], "argument --kv-len: must be an integer >= 0"),
    (["kv", "--config", "llama-2-7b", "--seq", "0"], "argument --seq: must be an integer > 0, got '0'"),
    (["generate", "--model", "tiny", "--prompt", "hi", "--temperature", "nan"],
     "argument --temperature: must be a finite number, got 'nan'"),
    (["generate", "--model", "tiny", "--prompt", "hi", "--max-new-tokens", "0"], "argument --max-new-tokens: must be"),
    (["serve-bench", "--model", "tiny", "--rate", "inf"], "argument --rate: must be a finite number, got 'inf'"),
    (["serve-bench", "--model", "tiny", "--requests", "-4"], "argument --requests: must be an integer > 0"),
    (["train", "--threads", "0"], "argument --threads: must be an integer > 0, got '0'"),
    (["nas", "--workers", "0"], "argument --workers: must be an integer > 0"),
    (["nas", "--latency-ms=-1"], "argument --latency-ms: must be a finite number > 0"),
    (["bench", "--model", "mlp", "--budget", "forever"], "argument --budget: 'forever' is not a duration"),
    (["bench", "--model", "mlp", "--ci", "2"], "argument --ci: must be a fraction in (0, 1]"),
    (["calibrate", "--threads=-1"], "argument --threads: must be an integer > 0"),
    (["profile", "--model", "lenet5", "--nonsense"], "unrecognized arguments: --nonsense"),
])
def test_bad_values_are_one_line_naming_the_flag(capsys, argv, text):
    assert text in one_line_error(capsys, argv)


@pytest.mark.parametrize("argv", [
    ["predict", "--config", "gpt2", "--hw", "h100,tpu9"],
    ["kv", "--config", "llama-2-7b", "--seq", "128", "--hw", "tpu9"],
    ["train-mem", "--config", "gpt2", "--hw", "tpu9"],
    ["bench", "--model", "mlp", "--hw", "tpu9"],
    ["nas", "--hw", "tpu9"],
    ["scale", "--compute", "1e21", "--hw", "tpu9"],
    ["study", "--hw", "tpu9:int8"],
    ["prune", "--model", "mlp", "--hw", "tpu9"],
    ["hw", "show", "h100", "tpu9"],
])
def test_unknown_device_is_an_error_listing_the_catalog(capsys, tmp_path, argv):
    if argv[0] == "study":
        argv = argv + ["--store", str(tmp_path / "s.db"), "--out", str(tmp_path / "r.html")]
    err = one_line_error(capsys, argv)
    assert "unknown device 'tpu9'" in err and "h100-sxm" in err and "stm32f746" in err
    assert "--hw" in err or argv[:2] == ["hw", "show"]


def test_several_devices_where_one_is_meant_are_refused(capsys):
    err = one_line_error(capsys, ["nas", "--hw", "stm32f746", "stm32h743"])
    assert "--hw takes one device here" in err and "stm32f746, stm32h743" in err


def test_several_devices_give_one_answer_each(capsys):
    assert main(["kv", "--config", "llama-2-7b", "--seq", "4096", "--hw", "h100,t4", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)["devices"]
    # 2 · 32 layers · 32 heads · 128 · 4096 tokens · 2 B = 2 GiB per sequence; 13.5 GB of fp16 weights
    assert d["h100"]["bytes"] == d["t4"]["bytes"] == 2 * 32 * 32 * 128 * 4096 * 2
    assert d["h100"]["max_batch"] > d["t4"]["max_batch"] >= 1  # 80 GB vs 16 GB beside the same weights


def test_train_mem_fits_each_device(capsys):
    assert main(["train-mem", "--config", "gpt2", "--precision", "fp32", "--hw", "h100", "t4", "--no-suggest",
                 "--json"]) == 0
    d = json.loads(capsys.readouterr().out)["devices"]
    assert d["h100"]["fit"]["target"]["capacity_bytes"] == 80e9 and d["t4"]["fit"]["target"]["capacity_bytes"] == 16e9
    # both GPUs run the same fused attention kernel: the same estimate, judged against each one's memory
    assert d["h100"]["estimate"]["peak_bytes"] == d["t4"]["estimate"]["peak_bytes"]


@pytest.mark.parametrize("argv, text", [
    (["profile", "--model", "lenet5", "--by", "op", "--depth", "3"], "--depth does not apply to --by op"),
    (["profile", "--model", "lenet5", "--by", "op", "--json"], "--by does not apply to --json"),
    (["nas", "--memory", "dram", "--hw", "rpi5", "--sram-kb", "256"], "--sram-kb does not apply to --memory dram"),
    (["train", "--model", "mlp", "--seq", "64"], "--seq does not apply to mlp"),
    (["scale", "--compute", "1e21", "--price-per-hour", "2"], "--price-per-hour does not apply without --hw"),
    (["scale", "--compute", "1e21", "--seed", "3"], "--seed does not apply without --fit"),
])
def test_options_that_do_not_apply_are_refused(capsys, argv, text):
    assert text in one_line_error(capsys, argv)


def _md5(path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_output_paths_are_checked_before_the_work(capsys, tmp_path):
    missing = tmp_path / "no-such-dir" / "plot.html"
    err = one_line_error(capsys, ["predict", "--config", "gpt2", "--hw", "h100", "--plot", str(missing)])
    assert f"--plot '{missing}': directory" in err and "does not exist" in err
    err = one_line_error(capsys, ["calibrate", "--quick", "--out", str(tmp_path)])
    assert f"--out '{tmp_path}' is a directory" in err
    err = one_line_error(capsys, ["scale", "--compute", "1e21", "--plot", str(missing)])
    assert "--plot" in err and "does not exist" in err
    precious = tmp_path / "runs.csv"
    precious.write_text("params,tokens,loss\n")
    before = _md5(precious)
    err = one_line_error(capsys, ["scale", "--compute", "1e21", "--plot", str(precious)])
    assert "--plot" in err and "must end in .svg or .html" in err and _md5(precious) == before
    store = tmp_path / "plot.html"  # an SQLite file that happens to be named .html is not overwritten either
    store.write_bytes(b"SQLite format 3\x00" + bytes(100))
    before = _md5(store)
    err = one_line_error(capsys, ["scale", "--compute", "1e21", "--plot", str(store)])
    assert "--plot" in err and "is an SQLite database: refusing to overwrite it" in err and _md5(store) == before


def test_unwritable_output_directory_even_for_root(capsys):
    # /proc takes no new files, whoever asks (a chmod 500 directory does not stop root)
    err = one_line_error(capsys, ["prune", "--model", "mlp", "--hw", "none", "--no-measure", "--out",
                                  "/proc/effml-test.safetensors"])
    assert "--out '/proc/effml-test.safetensors' cannot be written" in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_read_only_output_directory(capsys, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        err = one_line_error(capsys, ["prune", "--model", "mlp", "--hw", "none", "--no-measure", "--out",
                                      str(ro / "m.safetensors")])
        assert "--out" in err and "cannot be written" in err
    finally:
        ro.chmod(0o700)


def test_json_turns_non_finite_numbers_into_null_with_a_note(capsys):
    # a learning rate of 1e30 makes the loss NaN/inf after the first step: JSON has no such numbers
    assert main(["train", "--model", "mlp", "--lr", "1e30", "--steps", "3", "--warmup", "1", "--no-memory",
                 "--json"]) == 0
    out = capsys.readouterr().out
    assert "NaN" not in out and "Infinity" not in out
    d = json.loads(out)
    assert d["losses"][0] is not None and d["losses"][1:] == [None, None]
    assert d["non_finite"] == ["$.losses[1]", "$.losses[2]"]
