"""Hostile and absurd input over the command line: every case is one clear line on stderr, exit 2, and no file
changed, created or half-written (md5 of every file in the working folder before and after).

The classes: outputs that would destroy an input or cannot be written; files that are not effml stores and
hand-edited stores; absurd HF configs; negative/NaN/inf numbers; options that do not apply; unknown devices;
sizes that cannot fit in this machine's memory; user callables that raise.
"""

import hashlib
import json
import os
import signal
import sqlite3

import pytest

from effml.cli import main

FAST_STUDY = ["study", "--model", "lenet5", "--set", "width=1", "--data", "digits", "--epochs", "0.05",
              "--finetune-epochs", "0.05", "--train-limit", "64", "--test-limit", "32", "--measure-batch", "8",
              "--variants", "linear-4b", "--hw", "h100-sxm", "--no-calibrate"]
LLAMA = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 64, "intermediate_size": 128,
         "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 100,
         "max_position_embeddings": 64}
CONFIGS = {  # file name -> (field, absurd value)
    "hidden0.json": ("hidden_size", 0), "hidden-neg.json": ("hidden_size", -64),
    "hidden-frac.json": ("hidden_size", 64.5),
    "heads0.json": ("num_attention_heads", 0), "heads3.json": ("num_attention_heads", 3),
    "layers-neg.json": ("num_hidden_layers", -2), "vocab-neg.json": ("vocab_size", -100),
    "inter0.json": ("intermediate_size", 0), "kv3.json": ("num_key_value_heads", 3),
}
BOOM = '''
def boom(**kwargs):
    raise RuntimeError("kaboom in the user's builder")


def proxy(*args, **kwargs):
    raise RuntimeError("kaboom in the user's proxy")
'''
DEVICE = {"devices": {"hot": {"name": "hot", "kind": "gpu", "mem_bw": {"value": 1e12, "source": "test"},
                              "memory_bytes": {"value": 1e10, "source": "test"},
                              "tdp_w": {"value": -700, "source": "test"},
                              "peak_flops": {"fp32": {"value": 1e13, "source": "test"}}}}}


def _store(path, study="default", edit: str | None = None, artifact: bytes | None = None) -> None:
    """An effml store with one baseline run; `edit`: SQL run on it afterwards (a hand edit)."""
    from effml.study.store import Run, Store

    with Store(path) as s:
        s.put(Run(study, "baseline@fp", "baseline", [], {
            "accuracy": 0.9, "model_bytes": 1000, "latency_p50_s": 1e-3, "flops": 10_000, "params": 250},
            {"h100-sxm": {"latency_s": 1e-6, "energy_j": 1e-6, "usd_per_1m": 1e-3, "fits": True}}))
        if artifact is not None:
            s.put_artifact(study, "profile:baseline@fp", artifact)
    if edit:
        conn = sqlite3.connect(path)
        conn.execute(edit)
        conn.commit()
        conn.close()


@pytest.fixture
def ws(tmp_path, monkeypatch):
    """The working folder every case runs in: stores good and bad, files that are not stores, configs, a user
    module whose callables raise."""
    monkeypatch.chdir(tmp_path)
    _store(tmp_path / "runs.db")
    _store(tmp_path / "badjson.db", edit="UPDATE runs SET metrics = '{oops'")
    _store(tmp_path / "badtype.db", edit="""UPDATE runs SET metrics = '{"accuracy": "high"}'""")
    _store(tmp_path / "badversion.db", edit="UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    _store(tmp_path / "badprofile.db", artifact=b"\x00 not a profile")
    conn = sqlite3.connect(tmp_path / "app.db")
    conn.executescript("CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT); INSERT INTO users VALUES (1, 'a@b');")
    conn.close()
    (tmp_path / "empty.db").touch()
    (tmp_path / "notes.txt").write_text("my notes\n")
    (tmp_path / "data.csv").write_text("params,tokens,loss\n1,2,3\n")
    (tmp_path / "old.html").write_text("<!doctype html><p>an older report</p>\n")
    os.symlink("runs.db", tmp_path / "link.db")
    (tmp_path / "outdir").mkdir()
    (tmp_path / "res.csv").mkdir()
    (tmp_path / "boommod.py").write_text(BOOM)
    (tmp_path / "hot.json").write_text(json.dumps(DEVICE))
    for name, (field, value) in CONFIGS.items():
        (tmp_path / name).write_text(json.dumps({**LLAMA, field: value}))
    return tmp_path


def _snapshot(root) -> dict:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d != "__pycache__"]  # importing boommod.py may write its bytecode
        for name in [*filenames, *dirnames]:
            p = os.path.join(dirpath, name)
            rel = os.path.relpath(p, root)
            if os.path.islink(p):
                out[rel] = "-> " + os.readlink(p)
            elif os.path.isdir(p):
                out[rel] = "dir"
            else:
                with open(p, "rb") as f:
                    out[rel] = hashlib.md5(f.read()).hexdigest()
    return out


@pytest.fixture(autouse=True)
def _at_most_16_gib(monkeypatch):
    """The memory cases ask for 51 GB to 314 GB: on a machine with more, they would really allocate it. Here the
    memory available is what /proc/meminfo says, capped at 16 GiB, so every machine refuses them alike."""
    from effml import guards

    real = guards.available_ram
    monkeypatch.setattr(guards, "available_ram", lambda: min(real() or 16 * 2**30, 16 * 2**30))


@pytest.fixture(autouse=True)
def _time_limit():
    """A case that is not refused may start real work: fail it after 120 s rather than hang the suite."""
    def expired(*_):
        raise TimeoutError("not refused within 120 s: the command started its work")

    old = signal.signal(signal.SIGALRM, expired)
    signal.alarm(120)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def xfail(owner: str, why: str):
    return pytest.mark.xfail(strict=True, reason=f"{owner}: {why}")


C = pytest.param
CASES = [
    # ---- outputs that would destroy an input ----------------------------------------------------------------
    C([*FAST_STUDY, "--store", "runs.db", "--out", "runs.db"], "--out 'runs.db' is the same file as the input",
      id="study-out-is-the-store"),
    C([*FAST_STUDY, "--store", "runs.db", "--out", "link.db"], "--out 'link.db' is the same file as the input",
      id="study-out-is-the-store-via-symlink"),
    C([*FAST_STUDY, "--store", "runs.db", "--out", "./outdir/../runs.db"], "is the same file as the input 'runs.db'",
      id="study-out-is-the-store-via-relative-path"),
    C([*FAST_STUDY, "--store", "new.db", "--out", "new.db"], "--out 'new.db' is the same file as the input 'new.db'",
      id="study-out-is-the-new-store"),
    C([*FAST_STUDY, "--store", "runs.db", "--out", "notes.txt"], "--out 'notes.txt' exists and is a text file",
      id="study-out-is-a-text-file"),
    C([*FAST_STUDY, "--store", "runs.db", "--out", "app.db"], "--out 'app.db' exists and is an SQLite database",
      id="study-out-is-another-database"),
    C(["report", "--store", "runs.db", "--out", "runs.db"], "--out 'runs.db' is the same file as the input",
      id="report-out-is-the-store"),
    C(["report", "--store", "link.db", "--out", "runs.db"], "--out 'runs.db' is the same file as the input 'link.db'",
      id="report-out-is-the-store-behind-a-symlink"),
    C(["report", "--store", "runs.db", "--out", "data.csv"], "--out 'data.csv' exists and is a text file",
      id="report-out-is-a-csv"),
    C(["report", "--store", "runs.db", "--out", "empty.db"], r"--out 'empty.db' exists and is an empty file",
      id="report-out-is-an-empty-file"),
    # ---- outputs that cannot be written: checked before the work ---------------------------------------------
    C([*FAST_STUDY, "--out", "missing/report.html"], "--out 'missing/report.html': directory 'missing' does not exist",
      id="study-out-missing-dir"),
    C([*FAST_STUDY, "--out", "outdir"], "--out 'outdir' is a directory", id="study-out-a-directory"),
    C([*FAST_STUDY, "--out", "/proc/report.html"], "--out '/proc/report.html' cannot be written",
      id="study-out-read-only"),
    C(["report", "--out", "missing/r.html"], "--out 'missing/r.html': directory 'missing' does not exist",
      id="report-out-missing-dir"),
    C(["report", "--out", "outdir"], "--out 'outdir' is a directory", id="report-out-a-directory"),
    C(["report", "--out", "res.html", "--export"], "--export 'res.csv' is a directory", id="report-export-a-directory"),
    C(["prune", "--model", "lenet5", "--kind", "fine", "--sparsity", "0.5", "--no-measure", "--out",
       "missing/p.safetensors"], "--out 'missing/p.safetensors'", id="prune-out-missing-dir"),
    C(["quantize", "--model", "lenet5", "--method", "int8-dynamic", "--no-measure", "--out", "outdir"],
      "--out 'outdir'", id="quantize-out-a-directory"),
    C(["quantize", "--model", "lenet5", "--method", "int8-dynamic", "--no-measure", "--out", "notes.txt"],
      "--out 'notes.txt'", id="quantize-out-overwrites-a-text-file"),
    C(["predict", "--model", "lenet5", "--hw", "h100", "--plot", "missing/roof.html"], "--plot 'missing/roof.html'",
      id="predict-plot-missing-dir"),
    C(["scale", "--compute", "1e21", "--plot", "outdir"], "--plot 'outdir'", id="scale-plot-a-directory"),
    C(["calibrate", "--quick", "--out", "missing/dev.json"], "--out 'missing/dev.json'",
      id="calibrate-out-missing-dir"),
    C(["calibrate", "--quick", "--out", "runs.db"], "--out 'runs.db'", id="calibrate-out-overwrites-a-store"),
    # ---- files that are not effml stores; hand-edited stores ------------------------------------------------
    C([*FAST_STUDY, "--store", "app.db"], r"store 'app.db' is not an effml SQLite store: it is an SQLite database "
      r"with tables users", id="study-into-another-programs-database"),
    C(["report", "--store", "app.db"], "store 'app.db' is not an effml SQLite store", id="report-another-database"),
    C([*FAST_STUDY, "--store", "empty.db"], r"store 'empty.db' is not an effml SQLite store: it is an empty file",
      id="study-into-an-empty-file"),
    C(["report", "--store", "empty.db"], r"it is an empty file \(0 bytes\)", id="report-an-empty-file"),
    C([*FAST_STUDY, "--store", "notes.txt"], "store 'notes.txt' is not an effml SQLite store: it is a text file",
      id="study-into-a-text-file"),
    C(["report", "--store", "outdir"], "store 'outdir' is a directory", id="report-store-a-directory"),
    C([*FAST_STUDY, "--store", "outdir"], "store 'outdir' is a directory", id="study-store-a-directory"),
    C([*FAST_STUDY, "--store", "missing/runs.db"], "store 'missing/runs.db': directory 'missing' does not exist",
      id="study-store-missing-dir"),
    C([*FAST_STUDY, "--store", "/proc/runs.db"], "store '/proc/runs.db' cannot be created", id="study-store-read-only"),
    C(["report", "--store", "nothing.db"], "no study store at 'nothing.db'", id="report-store-missing"),
    C(["report", "--store", "badjson.db"], r"table runs, row id 1 \(variant 'baseline'\): field 'metrics' is not "
      "valid JSON", id="report-row-bad-json"),
    C(["report", "--store", "badtype.db"], r"row id 1 \(variant 'baseline'\): field 'metrics.accuracy' is 'high'",
      id="report-row-bad-type"),
    C(["report", "--store", "badversion.db"], "row 'schema_version' is '99'", id="report-bad-schema-version"),
    C(["report", "--store", "badprofile.db"], r"table artifacts, key 'profile:baseline@fp' .* is not an effml "
      "profile", id="report-bad-profile-artifact"),
    C(["report", "--store", "runs.db", "--study", "nope"], "has no runs of study 'nope'", id="report-unknown-study"),
    C(["nas", "--space", "mobilenetv2", "--hw", "stm32f746", "--trials", "1", "--store", "app.db"],
      "store 'app.db' is not an effml SQLite store", id="nas-into-another-programs-database"),
    # ---- absurd HF configs: the field named, before transformers ---------------------------------------------
    *[C(["profile", "--config", name], f"field '{field}' is {value!r}", id=f"profile-config-{name[:-5]}")
      for name, (field, value) in CONFIGS.items() if name not in ("heads3.json", "kv3.json")],
    C(["profile", "--config", "heads3.json"], r"field 'num_attention_heads' \(3\) does not divide field 'hidden_size'",
      id="profile-config-heads-not-dividing-hidden"),
    C(["predict", "--config", "kv3.json", "--hw", "h100"], r"field 'num_key_value_heads' \(3\) does not divide",
      id="predict-config-kv-heads-not-dividing"),
    C(["kv", "--config", "hidden0.json", "--seq", "128"], "field 'hidden_size' is 0", id="kv-config-hidden0"),
    C(["train-mem", "--config", "vocab-neg.json"], "field 'vocab_size' is -100", id="train-mem-config-vocab-neg"),
    # ---- negative / NaN / inf numbers ------------------------------------------------------------------------
    C(["predict", "--model", "lenet5", "--hw", "h100", "--price", "-1"], "--price", id="price-negative"),
    C(["predict", "--model", "lenet5", "--hw", "h100", "--price", "nan"], "--price", id="price-nan"),
    C(["scale", "--compute", "1e21", "--hw", "h100", "--price-per-hour", "inf"], "--price-per-hour",
      id="price-per-hour-inf"),
    C(["predict", "--model", "lenet5", "--hw", "hot.json"], "tdp_w", id="device-json-negative-tdp"),
    C(["prune", "--model", "lenet5", "--kind", "fine", "--lr", "-0.1", "--no-measure"], "--lr", id="prune-lr-negative"),
    C(["train", "--model", "mlp", "--steps", "2", "--lr", "nan"], "--lr", id="train-lr-nan"),
    C(["generate", "--model", "tiny", "--prompt", "hi", "--temperature", "-1"], "--temperature",
      id="temperature-negative"),
    C(["generate", "--model", "tiny", "--prompt", "hi", "--temperature", "inf"], "--temperature", id="temperature-inf"),
    C(["serve-bench", "--model", "tiny", "--rate", "0"], "--rate", id="rate-zero"),
    C(["serve-bench", "--model", "tiny", "--rate", "-3"], "--rate", id="rate-negative"),
    C(["bench", "--model", "lenet5", "--threads", "0"], "--threads", id="bench-threads-zero"),
    C(["calibrate", "--quick", "--threads", "-2"], "--threads", id="calibrate-threads-negative"),
    C(["train", "--model", "mlp", "--steps", "2", "--threads", "-1"], "--threads", id="train-threads-negative"),
    C(["profile", "--model", "lenet5", "--depth", "-1"], "--depth", id="profile-depth-negative"),
    C(["profile", "--model", "lenet5", "--set", "width=0"], "width", id="profile-width-zero"),
    C([*FAST_STUDY[:4], "width=-1", *FAST_STUDY[5:]], "width", id="study-width-negative"),
    C(["scale", "--compute", "1e21", "--hw", "h100", "--mfu", "1.5"], "--mfu", id="mfu-above-one"),
    C(["scale", "--compute", "inf"], "--compute", id="compute-inf"),
    C(["kv", "--config", "llama-2-7b", "--seq", "-5"], "--seq", id="kv-seq-negative"),
    C(["kv", "--config", "llama-2-7b", "--seq", "128", "--batch", "0"], "--batch", id="kv-batch-zero"),
    C(["profile", "--model", "lenet5", "--input-shape", "1,0,28,28"], "--input-shape", id="input-shape-zero"),
    C(["bench", "--model", "lenet5", "--budget", "-1"], "--budget", id="bench-budget-negative"),
    C(["train-mem", "--config", "gpt2", "--world-size", "0"], "--world-size", id="world-size-zero"),
    C(["nas", "--space", "mobilenetv2", "--hw", "stm32f746", "--trials", "0"], "--trials", id="nas-trials-zero"),
    C([*FAST_STUDY, "--epochs", "nan"], "--epochs", id="study-epochs-nan"),
    # ---- options that do not apply to the chosen method ------------------------------------------------------
    C(["prune", "--model", "lenet5", "--kind", "fine", "--nm", "2:4", "--no-measure"], "--nm", id="nm-with-fine"),
    C(["prune", "--model", "lenet5", "--kind", "channel", "--nm", "2:4", "--no-measure"], "--nm",
      id="nm-with-channel"),
    C(["quantize", "--model", "lenet5", "--method", "int8-static", "--per-tensor", "--no-measure"], "--per-tensor",
      id="per-tensor-with-static-int8"),
    C(["quantize", "--model", "lenet5", "--method", "kmeans", "--asymmetric", "--no-measure"], "--asymmetric",
      id="asymmetric-with-kmeans"),
    C(["quantize", "--model", "lenet5", "--method", "int8-dynamic", "--bits", "4", "--no-measure"], "--bits",
      id="bits-with-int8"),
    C(["generate", "--model", "tiny", "--prompt", "hi", "--gamma", "3"], "--gamma", id="gamma-without-speculative"),
    C(["profile", "--model", "lenet5", "--seq", "128"], "seq", id="seq-with-an-image-model"),
    C(["profile", "--config", "gpt2", "--input-shape", "1,3,224,224"], "--input-shape", id="input-shape-with-config"),
    # ---- unknown devices: an error, not a note ---------------------------------------------------------------
    C(["predict", "--model", "lenet5", "--hw", "h1000"], "unknown device 'h1000'", id="predict-unknown-hw"),
    C(["kv", "--config", "llama-2-7b", "--seq", "128", "--hw", "nosuchgpu"], "nosuchgpu", id="kv-unknown-hw"),
    C([*FAST_STUDY[:-3], "--hw", "nosuchgpu", "--no-calibrate"], "nosuchgpu", id="study-unknown-hw"),
    C(["prune", "--model", "lenet5", "--kind", "fine", "--hw", "nosuchgpu", "--no-measure"], "nosuchgpu",
      id="prune-unknown-hw"),
    C(["bench", "--model", "lenet5", "--hw", "nosuchgpu"], "nosuchgpu", id="bench-unknown-hw"),
    C(["scale", "--compute", "1e21", "--hw", "nosuchgpu"], "nosuchgpu", id="scale-unknown-hw"),
    C(["train-mem", "--config", "gpt2", "--hw", "nosuchgpu"], "nosuchgpu", id="train-mem-unknown-hw"),
    # ---- more memory than this machine has: refused with the estimate, before allocating ----------------------
    C(["quantize", "--config", "llama-2-70b", "--method", "int8-dynamic", "--no-measure"],
      r"building 'llama-2-70b' with real weights in fp32 \(69 G params = 276 GB", id="quantize-70b-fp32"),
    C(["prune", "--config", "llama-2-70b", "--kind", "fine", "--no-measure"], "'llama-2-70b' with real weights",
      id="prune-70b-fp32"),
    C(["bench", "--config", "llama-2-70b", "--dtype", "bf16"], r"'llama-2-70b' with real weights in bf16 .* 138 GB",
      id="bench-70b-bf16"),
    C(["profile", "--model", "lenet5", "--input-shape", "100000000,1,28,28"],
      r"--input-shape: an input of shape \(100000000, 1, 28, 28\) .* = 314 GB\) needs 314 GB",
      id="input-shape-beyond-ram"),
    C(["profile", "--model", "lenet5", "--batch", "100000000"], r"--batch: an input of shape \(100000000, 1, 28, 28\)",
      id="batch-beyond-ram"),
    C(["profile", "--config", "gpt2", "--device", "cpu", "--batch", "100000000", "--seq", "1024"],
      "'gpt2' with real weights", id="config-inputs-beyond-ram"),
    # 512 x 1024 x 50257 fp32 logits = 105.4 GB, whatever the rest of the activations
    C(["profile", "--config", "gpt2", "--device", "cpu", "--batch", "512", "--seq", "1024"], r"logits 105 GB\)",
      id="config-logits-beyond-ram"),
    C(["profile", "--model", "lenet5", "--set", "width=1000"], r"--model lenet5: its weights \(242 GB as built with",
      id="set-width-beyond-ram"),
    C(["train", "--model", "tiny_gpt", "--seq", "100000000", "--steps", "2", "--warmup", "0"],
      r"--model tiny_gpt: its weights \(51.2 GB", id="train-seq-beyond-ram"),
    C(["train", "--model", "lenet5", "--batch", "100000000", "--steps", "2", "--warmup", "0"],
      r"--batch: an input of shape \(100000000, 1, 28, 28\)", id="train-batch-beyond-ram"),
    # ---- user callables that raise: named by spec ------------------------------------------------------------
    *[C([cmd, "--model", "boommod:boom", *extra], "boommod:boom", id=f"{cmd}-model-raises")
      for cmd, extra in (("profile", []), ("predict", ["--hw", "h100"]), ("bench", []),
                         ("train-mem", ["--input-shape", "1,3"]), ("train", ["--steps", "1"]),
                         ("prune", ["--kind", "fine", "--input-shape", "1,3", "--no-measure"]))],
    C([*FAST_STUDY[:2], "boommod:boom", *FAST_STUDY[3:]], "boommod:boom", id="study-model-raises"),
    C(["nas", "--space", "mobilenetv2", "--hw", "stm32f746", "--trials", "1", "--proxy", "boommod:proxy", "--store",
       "nas.db"], "boommod:proxy", id="nas-proxy-raises"),
]


JSON_CASES = [  # --json: the refusal is the one stderr line, and stdout holds no NaN/Infinity (nor anything)
    C(["predict", "--model", "lenet5", "--hw", "h100", "--price", "nan", "--json"], "--price", id="json-price-nan"),
    C(["scale", "--compute", "1e400", "--json"], "--compute", id="json-compute-overflows-to-inf"),
    C(["kv", "--config", "hidden0.json", "--seq", "128", "--json"], "'hidden_size' is 0", id="json-config-hidden0"),
    C(["report", "--store", "badtype.db", "--json"], "'metrics.accuracy' is 'high'", id="json-report-bad-row"),
    C(["profile", "--model", "lenet5", "--batch", "100000000", "--json"], "--batch: an input of shape",
      id="json-batch-beyond-ram"),
]


@pytest.mark.parametrize("argv,message", CASES + JSON_CASES)
def test_refused_with_one_line_and_nothing_written(ws, capsys, argv, message):
    import re

    before = _snapshot(ws)
    code = main(argv)
    out, err = capsys.readouterr()
    err = [line for line in err.splitlines() if line.strip()]
    assert code == 2, f"exit {code}, stderr: {err[-3:]}"
    assert len(err) == 1, err
    assert re.search(message, err[0]), err[0]
    assert _snapshot(ws) == before  # nothing changed, created or left half-written
    assert "NaN" not in out and "Infinity" not in out
    if "--json" in argv:
        assert out == ""  # no half JSON object before the error


def test_every_torch_load_is_weights_only():
    """Loading a pickle runs code: every torch.load in effml passes weights_only=True (or safetensors is used)."""
    import ast
    from pathlib import Path

    import effml

    unsafe = []
    for path in Path(effml.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load" \
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch":
                safe = any(k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
                           for k in node.keywords)
                if not safe:
                    unsafe.append(f"{path.name}:{node.lineno}")
    assert unsafe == []


def test_the_case_count():
    assert len(CASES) + len(JSON_CASES) >= 60


def test_read_only_directory_for_a_normal_user(ws, capsys):
    if os.geteuid() == 0:
        pytest.skip("root writes into a read-only directory; /proc covers the read-only case above")
    ro = ws / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        assert main(["report", "--out", "ro/r.html"]) == 2
        assert "--out 'ro/r.html' cannot be written" in capsys.readouterr().err
    finally:
        ro.chmod(0o700)
