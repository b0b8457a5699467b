"""--device: cpu | cuda | cuda:N checked against this machine; CUDA timing (events, peak memory, the card's name)
runs only where a GPU is visible — elsewhere those tests skip with the reason, they never pass empty."""

import json

import pytest
import torch

from effml.cli import main
from effml.errors import ConfigError
from effml.measure import MeasureConfig, measure
from effml.measure.device import device_info, resolve_device

GPU = torch.cuda.is_available()
needs_gpu = pytest.mark.skipif(not GPU, reason="no CUDA GPU visible to torch on this machine "
                                               f"(torch {torch.__version__}, CUDA {torch.version.cuda})")


def test_cpu_and_bad_names():
    assert resolve_device(None) == resolve_device("cpu") == resolve_device(" CPU ") == "cpu"
    for bad in ("gpu", "cuda:x", "cpu:0", "tpu", "cuda:-1"):
        with pytest.raises(ConfigError, match=r"--device .* is not a device: use cpu, cuda or cuda:N"):
            resolve_device(bad)
    info = device_info("cpu")
    assert info["capability"] == torch.backends.cpu.get_cpu_capability() and info["memory_bytes"] is None


@pytest.mark.skipif(GPU, reason="this machine has a GPU: the no-GPU message cannot be shown here")
@pytest.mark.parametrize("cmd", [["bench", "--model", "mlp"], ["calibrate", "--quick"]])
def test_cuda_without_a_gpu_is_one_clear_line(cmd, capsys):
    assert main([*cmd, "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "--device cuda: no CUDA GPU is visible to torch here" in err and "use --device cpu" in err


@needs_gpu
def test_cuda_index_out_of_range():
    n = torch.cuda.device_count()
    with pytest.raises(ConfigError, match=f"has {n} CUDA device"):
        resolve_device(f"cuda:{n}")
    assert resolve_device("cuda:0") == "cuda:0"


@needs_gpu
def test_measure_on_cuda_uses_events_and_the_allocator_peak():
    x = torch.randn(1024, 1024, device="cuda")
    w = torch.nn.Linear(1024, 1024, device="cuda")
    m = measure(w, x, config=MeasureConfig(budget_s=0.5, min_repeats=5))
    d = m.to_dict()
    assert d["clock"] == "cuda-events" and d["device"].startswith("cuda")
    assert d["device_name"] == torch.cuda.get_device_name(0) and "." in d["device_capability"]
    # the allocator peak holds at least the input, the weight and the output: 3 x 1024 x 1024 x 4 B = 12 MiB
    assert d["memory"]["torch_peak_bytes"] >= 3 * 1024 * 1024 * 4
    # a 1024^3 fp32 matmul is 2.1 GFLOP: any GPU needs well over 1 us, and well under 1 s
    assert 1e-6 < d["p50_s"] < 1.0


@needs_gpu
def test_bench_cli_on_cuda(capsys):
    assert main(["bench", "--model", "mlp", "--device", "cuda", "--batch", "1,64", "--budget", "0.3",
                 "--hw", "h100-sxm", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert [r["batch"] for r in d["results"]] == [1, 64]
    assert all(r["clock"] == "cuda-events" and r["memory"]["torch_peak_bytes"] > 0 for r in d["results"])


@needs_gpu
def test_calibrate_cuda_fits_this_gpu(tmp_path, capsys):
    out = tmp_path / "gpu.json"
    assert main(["calibrate", "--device", "cuda", "--quick", "--out", str(out), "--json"]) == 0
    dev = json.loads(capsys.readouterr().out)["device"]
    assert dev["kind"] == "gpu" and dev["meta"]["gpu"] == torch.cuda.get_device_name(0)
    peak = {k: v["value"] for k, v in dev["peak_flops"].items()}
    # any CUDA GPU of the last decade: fp32 matmul between 1 TFLOP/s and 200 TFLOP/s, HBM/GDDR copy bandwidth
    # between 100 GB/s and 10 TB/s (H100 SXM: 67 TFLOP/s fp32 and 3.35 TB/s on its datasheet)
    assert 1e12 < peak["fp32"] < 2e14 and 1e11 < dev["mem_bw"]["value"] < 1e13
    if torch.cuda.get_device_capability(0) >= (7, 0):  # tensor cores: half precision beats fp32
        assert peak["fp16"] > 1.5 * peak["fp32"]
    assert dev["memory_bytes"]["value"] == torch.cuda.get_device_properties(0).total_memory


@needs_gpu
def test_interleave_on_cuda_waits_for_the_gpu():
    from effml.measure.ab import interleave, median

    a = torch.randn(4096, 4096, device="cuda")
    times = interleave({"mm": lambda: a @ a}, rounds=5, warmup=1)
    # 2 x 4096^3 = 137 GFLOP; no GPU reaches 1 PFLOP/s in fp32, so a timed call that waited for the GPU lasts
    # >= 0.137 ms, where an unsynchronised launch returns in ~10 us
    assert median(times["mm"]) >= 137e9 / 1e15


def test_a_gpu_run_is_not_compared_with_the_cpu_calibration(tmp_path, monkeypatch):
    from effml.cli.bench_cmd import _prediction_target

    fig = {"value": 1e12, "source": "hand-written for this test"}
    for kind, expect in (("cpu", None), ("gpu", "local")):
        local = {"name": f"local {kind}", "kind": kind, "peak_flops": {"fp32": fig}, "mem_bw": fig,
                 "memory_bytes": fig}
        path = tmp_path / f"{kind}.json"
        path.write_text(json.dumps({"devices": {"local": local}}))
        monkeypatch.setenv("EFFML_LOCAL_DEVICE", str(path))
        hw, note = _prediction_target("local", "cuda:0")
        assert hw == expect and (("--hw" in note) if kind == "cpu" else note == "")
    assert _prediction_target("local", "cpu") == ("local", "")
    assert _prediction_target("h100-sxm", "cuda:0") == ("h100-sxm", "")
