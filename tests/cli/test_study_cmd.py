"""`effml study --device / --backend`: checked before any work; ONNX Runtime measured per variant from the CLI."""

import json
import sys
import textwrap

import pytest
import torch

from effml.cli import main

USER_MODULE = textwrap.dedent('''
    import torch
    from torch import nn

    def build():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)).eval()

    def example_inputs():
        return torch.randn(8, 16, generator=torch.Generator().manual_seed(1))

    def evaluate(model):
        x = torch.randn(64, 16, generator=torch.Generator().manual_seed(2))
        with torch.no_grad():
            ref = build()(x).argmax(1)
            return {"accuracy": float((model(x).argmax(1) == ref).float().mean())}
''')


@pytest.fixture
def spec(tmp_path):
    (tmp_path / "tiny_user.py").write_text(USER_MODULE)
    p = tmp_path / "study.toml"
    p.write_text('name = "tiny"\nmodel = "tiny_user:build"\nevaluate = "tiny_user:evaluate"\n'
                 'example_inputs = "tiny_user:example_inputs"\nplans = ["prune-fine-50%"]\ndevices = ["rpi5"]\n'
                 'measure_budget_s = 0.05\n')
    yield p
    sys.modules.pop("tiny_user", None)


no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is visible: the no-GPU error cannot occur")


@no_gpu
@pytest.mark.parametrize("argv", [["study"], ["study", "--spec", "SPEC"]])
def test_device_cuda_without_gpu_is_one_line_before_any_work(argv, spec, tmp_path, capsys):
    store = tmp_path / "r.db"
    argv = [str(spec) if a == "SPEC" else a for a in argv]
    assert main([*argv, "--device", "cuda", "--store", str(store), "--out", str(tmp_path / "r.html")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("effml study: error: --device cuda: no CUDA GPU is visible to torch here")
    assert len(err.splitlines()) == 1 and not store.exists()


def test_device_typo_and_unknown_backend(spec, tmp_path, capsys):
    store = tmp_path / "r.db"
    assert main(["study", "--device", "gpu", "--store", str(store)]) == 2
    assert "--device 'gpu' is not a device: use cpu, cuda or cuda:N" in capsys.readouterr().err
    assert main(["study", "--spec", str(spec), "--backend", "tensorrt", "--store", str(store)]) == 2
    assert "--backend: unknown backend 'tensorrt'; known: torch, onnxruntime" in capsys.readouterr().err
    assert not store.exists()


def test_missing_plotly_or_ort_fails_before_any_work(spec, tmp_path, capsys, monkeypatch):
    store = tmp_path / "r.db"
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # not installed, as far as import can tell
    assert main(["study", "--spec", str(spec), "--backend", "onnxruntime", "--store", str(store)]) == 2
    assert "pip install 'effml[onnx]'" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "plotly", None)
    assert main(["study", "--store", str(store), "--out", str(tmp_path / "r.html")]) == 2  # the default study
    err = capsys.readouterr().err
    assert "the study's HTML report needs the optional package 'plotly'" in err and "effml[report]" in err
    assert not store.exists()  # refused before training a baseline, not after the whole study


def test_backend_onnxruntime_from_the_cli(spec, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    store = tmp_path / "r.db"
    argv = ["study", "--spec", str(spec), "--backend", "onnxruntime", "--store", str(store),
            "--out", str(tmp_path / "r.html"), "--json"]
    assert main(argv) == 0
    res = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in res["rows"]] == ["baseline", "prune-fine-50%"]
    for r in res["rows"]:
        # fp32 exported as is: ORT computes the same products; float32 rounding only
        assert r["ort_error"] is None and r["ort_cosine"] > 0.999 and r["ort_latency_p50_s"] > 0
    assert res["rows"][0]["ort_int8_cosine"] > 0.95  # ORT dynamic int8 of a 2-layer MLP (8-bit weights/acts)
