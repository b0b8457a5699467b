"""ONNX Runtime backend: exported graphs agree with PyTorch, ORT int8 stays close, failures are listed, the thread
count is what was asked. Correctness only: speed ratios are in benchmarks/bench_backends.py."""

import sys

import pytest
import torch
from torch import nn

pytest.importorskip("onnxruntime", reason="onnxruntime not installed (pip install 'effml[onnx]')")
pytest.importorskip("onnx", reason="onnx not installed (pip install 'effml[onnx]')")

from effml.configs import ModelConfig, build  # noqa: E402
from effml.errors import ConfigError  # noqa: E402
from effml.extras import MissingExtra  # noqa: E402
from effml.measure.onnxrt import (MIN_ROUNDS, OnnxExportError, OrtConfig, OrtRunner, agreement,  # noqa: E402
                                  compare_backends, disturbed_note, export, time_beside_torch)

pytestmark = pytest.mark.usefixtures("one_thread")
TINY_BERT = ModelConfig("tiny-bert", "encoder", {"model_type": "bert", "vocab_size": 100, "hidden_size": 64,
                                                 "num_hidden_layers": 2, "num_attention_heads": 2,
                                                 "intermediate_size": 128, "max_position_embeddings": 64})


def test_linear_exports_exactly(tmp_path):
    # y = x W^T + b with W = [[1, 2], [3, 4], [5, 6]], b = [0.5, -1, 2], x = [1, -1]:
    # y = [1-2+0.5, 3-4-1, 5-6+2] = [-0.5, -2, 1]  (small integers: exact in fp32 on both runtimes)
    lin = nn.Linear(2, 3)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1., 2.], [3., 4.], [5., 6.]]))
        lin.bias.copy_(torch.tensor([0.5, -1., 2.]))
    x = torch.tensor([[1., -1.]])
    names = export(lin, (x,), tmp_path / "lin.onnx")
    out = OrtRunner(tmp_path / "lin.onnx", names, threads=1)(x)
    assert out.tolist() == [[-0.5, -2.0, 1.0]]


def test_compare_backends_on_a_transformer():
    model = build(TINY_BERT, device="cpu")
    ids = torch.randint(0, 100, (2, 16), generator=torch.Generator().manual_seed(0))  # (B, T)
    cmp = compare_backends(model, (ids,), name="tiny-bert", rounds=3, budget_s=5,
                           config=OrtConfig(variants=("fp32", "int8", "int8-per-channel")))
    rows = {r.variant: r for r in cmp.rows}
    assert list(rows) == ["pytorch fp32", "ort fp32", "ort int8", "ort int8 per channel"]
    assert all(r.error is None and len(r.times_s) == 3 for r in cmp.rows)  # 3 interleaved rounds each
    # ORT fp32 computes the same graph in fp32: only summation order and fused kernels differ, so errors stay at
    # float rounding of O(1) LayerNorm outputs summed over 64-128 terms: << 1e-4 absolute
    assert rows["ort fp32"].cosine > 0.99999 and rows["ort fp32"].max_abs_err < 1e-4
    # ORT dynamic int8 (per-tensor int8 weights and activations, 2 layers): measured cosine 0.99997 here; a
    # broken quantization (wrong scale, wrong zero point) drops it below 0.9
    assert rows["ort int8"].cosine > 0.99 and rows["ort int8 per channel"].cosine > 0.99
    assert rows["ort int8"].size_bytes < 0.5 * rows["ort fp32"].size_bytes  # int8 weights: ~1/4 of the Linears
    d = cmp.to_dict()
    assert d["rows"][0]["speedup_vs_fp32"] == 1.0 and d["threads"] == 1 and d["cpu_capability"]


def test_export_failure_is_listed_and_pytorch_still_timed():
    class Eig(nn.Module):  # aten::linalg_eigh has no ONNX symbolic at opset 17
        def forward(self, x):
            return torch.linalg.eigh(x @ x.transpose(-1, -2))[0]

    cmp = compare_backends(Eig(), (torch.randn(4, 4),), name="eig", rounds=2, budget_s=2)
    pt, *ort = cmp.rows
    assert pt.error is None and len(pt.times_s) == 2
    assert [r.variant for r in ort] == ["ort fp32", "ort int8"]
    for r in ort:
        assert r.times_s == [] and "exporting eig to ONNX failed" in r.error and "linalg_eigh" in r.error


def test_session_uses_the_configured_threads(tmp_path):
    lin = nn.Linear(8, 8)
    names = export(lin, (torch.randn(1, 8),), tmp_path / "l.onnx")
    for n in (1, 2):
        opts = OrtRunner(tmp_path / "l.onnx", names, threads=n).session.get_session_options()
        assert opts.intra_op_num_threads == n and opts.inter_op_num_threads == 1
        # no busy-waiting workers between runs: they would hold the cores the PyTorch call timed next needs
        assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"
        assert opts.get_session_config_entry("session.inter_op.allow_spinning") == "0"
    spin = OrtRunner(tmp_path / "l.onnx", names, threads=2, spinning=True).session.get_session_options()
    assert spin.get_session_config_entry("session.intra_op.allow_spinning") == "1"


def test_time_beside_torch_warms_up_interleaves_and_keeps_min_rounds():
    order, threads_seen = [], set()

    def call(name):
        def fn():
            order.append(name)
            threads_seen.add(torch.get_num_threads())
        return fn

    before = torch.get_num_threads()  # 1 (the one_thread fixture)
    # a budget far below one round: the window still takes min_rounds timed rounds after the warm-up rounds
    times = time_beside_torch({"torch": call("torch"), "ort": call("ort")}, threads=2, budget_s=1e-9, warmup=5)
    assert [len(times["torch"]), len(times["ort"])] == [MIN_ROUNDS, MIN_ROUNDS] and MIN_ROUNDS == 20
    # 5 warm-up + 20 timed rounds, each torch then ort: 50 calls strictly alternating
    assert order == ["torch", "ort"] * 25
    assert threads_seen == {2} and torch.get_num_threads() == before  # torch's threads set for the window only
    with pytest.raises(ConfigError, match="time_beside_torch threads must be a positive integer, got 0"):
        time_beside_torch({"torch": call("torch")}, threads=0, budget_s=1.0)


def test_disturbed_note():
    # the reviewer's pattern: 17 of 20 PyTorch calls waited ~30 ms for the CPU, 3 ran in 1 ms; p50 = 30 ms,
    # p10 = sorted[20 // 10] = 1 ms -> 30x > DISTURBED (3); ORT steady at 0.3 ms (p50 = p10)
    times = {"pytorch fp32": [1e-3] * 3 + [30e-3] * 17, "ort fp32": [0.3e-3] * 20}
    assert disturbed_note(times, 2).startswith(
        "pytorch fp32: p50 in the window (30 ms) is 30.0x its fastest tenth of calls there (1 ms): its 2 thread(s) "
        "waited for the CPU")
    # steady (p50 / p10 = 1.2 / 1.0) and within 3x of its back-to-back p50 (1.2 / 1.1): no note
    steady = {"pytorch fp32": [1e-3] * 2 + [1.2e-3] * 18, "ort fp32": [0.3e-3] * 20}
    assert disturbed_note(steady, 2, ("pytorch fp32", 1.1e-3)) is None
    # steady in the window, but 1.2 / 0.3 = 4x its back-to-back p50
    assert "is 4.0x its p50 back to back" in disturbed_note(steady, 2, ("pytorch fp32", 0.3e-3))
    # ORT's own calls disturbed (p50 1 ms, p10 0.2 ms: 5x): named by its key
    assert disturbed_note({"pytorch fp32": [1e-3] * 20, "ort fp32": [0.2e-3] * 4 + [1e-3] * 16}, 1).startswith(
        "ort fp32: p50 in the window (1 ms) is 5.0x its fastest tenth")


def test_agreement_numbers():
    ref = torch.tensor([3.0, 4.0])
    # cos([3,4],[4,3]) = (12 + 12) / (5 * 5) = 0.96; max |error| = 1
    a = agreement(ref, torch.tensor([4.0, 3.0]))
    assert a["cosine"] == pytest.approx(0.96) and a["max_abs_err"] == 1.0
    with pytest.raises(OnnxExportError, match=r"output shape \(3,\) differs"):
        agreement(ref, torch.zeros(3))


def test_config_is_validated():
    with pytest.raises(ConfigError, match="OrtConfig.threads"):
        OrtConfig(threads=0)
    with pytest.raises(ConfigError, match="OrtConfig.variants"):
        OrtConfig(variants=("fp16",))


def test_missing_onnxruntime_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(MissingExtra, match=r"pip install 'effml\[onnx\]'"):
        OrtRunner(tmp_path / "x.onnx", ["input_0"])


def test_bench_cli_onnxruntime_backend(tmp_path, capsys):
    import json

    from effml.cli import main

    folder = tmp_path / "tiny-bert"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({**TINY_BERT.hf_config, "architectures": ["BertModel"]}))
    assert main(["bench", "--config", str(folder), "--seq", "16", "--batch", "1,2", "--backend", "onnxruntime",
                 "--budget", "0.3", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["backend"] == "onnxruntime" and [r["input_shapes"] for r in d["results"]] == [[[1, 16]], [[2, 16]]]
    for res in d["results"]:
        rows = {r["variant"]: r for r in res["rows"]}
        assert list(rows) == ["pytorch fp32", "ort fp32", "ort int8"] and res["threads"] == 1
        assert "note" in res  # the window's disturbed_note (None on a steady CPU): the JSON says when to distrust
        assert rows["ort fp32"]["cosine"] > 0.99999 and rows["ort int8"]["cosine"] > 0.99
        # a 0.3 s budget still gets the window's MIN_ROUNDS (20) interleaved rounds of every variant
        assert all(r["p50_s"] > 0 and r["repeats"] >= MIN_ROUNDS for r in rows.values())


def test_bench_cli_onnxruntime_refuses_half_precision(capsys):
    from effml.cli import main

    assert main(["bench", "--model", "mlp", "--backend", "onnxruntime", "--dtype", "bf16"]) == 2
    assert "--backend onnxruntime compares fp32 and int8" in capsys.readouterr().err


def test_bench_cli_onnxruntime_causal_lm(tmp_path, capsys):
    import json

    from effml.cli import main

    # without an attention mask transformers' packed-sequence check calls torch.diff (no ONNX symbolic at opset
    # 17); the CLI passes an all-ones mask to both runtimes, so a Llama-style model exports and agrees
    cfg = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": 128, "hidden_size": 32,
           "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 64,
           "max_position_embeddings": 64}
    folder = tmp_path / "tiny-llama"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(cfg))
    assert main(["bench", "--config", str(folder), "--seq", "8", "--backend", "onnxruntime", "--budget", "0.2",
                 "--json"]) == 0
    rows = {r["variant"]: r for r in json.loads(capsys.readouterr().out)["results"][0]["rows"]}
    assert rows["ort fp32"]["error"] is None and rows["ort fp32"]["cosine"] > 0.99999
    assert rows["ort int8"]["error"] is None and rows["ort int8"]["cosine"] > 0.99
