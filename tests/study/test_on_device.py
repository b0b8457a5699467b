"""effml.study(..., device=...): plans with CPU-only kernels refused on CUDA, and (where a GPU exists) the study
really made and measured there."""

import pytest
import torch
from torch import nn

from effml.compress.configs import config_from_dict
from effml.errors import ConfigError
from effml.study.on_device import check_config_on, cuda_refusal, for_timing, split_plans, to_device
from effml.study.plans import USER_PLANS


def _cuda():
    if not torch.cuda.is_available():
        pytest.skip(f"no CUDA device: torch {torch.__version__} sees no GPU (torch.cuda.is_available() is False)")
    return "cuda:0"


def test_plans_refused_on_cuda_and_kept_on_cpu():
    plans = [USER_PLANS.get(n) for n in ("prune-fine-50%", "linear-8b", "kmeans-4b", "int8-dynamic",
                                         "int8-static", "weight-only-int4", "prune-channel-30%+int8")]
    assert split_plans(plans, "cpu") == (plans, [])
    kept, refused = split_plans(plans, "cuda:0")
    # pruning and the fake-quant formats keep fp32 tensors: they run where the baseline runs
    assert [p.name for p in kept] == ["prune-fine-50%", "linear-8b", "kmeans-4b"]
    assert [n for n, _ in refused] == ["int8-dynamic", "int8-static", "weight-only-int4", "prune-channel-30%+int8"]
    assert all(why.startswith("not on cuda:0: ") and "no CUDA kernel" in why for _, why in refused)
    assert "_weight_int4pack_mm_for_cpu" in dict(refused)["weight-only-int4"]


def test_weight_only_dequant_runs_anywhere_and_packed_is_refused():
    assert cuda_refusal([("quantize", {"method": "weight-only", "bits": 8, "kernel": "dequant"})]) is None
    assert cuda_refusal([("prune", {"method": "channel", "sparsity": 0.3})]) is None
    with pytest.raises(ConfigError, match=r"--device cuda:1: int8-dynamic: torch.ao quantized int8 kernels"):
        check_config_on(config_from_dict({"method": "int8-dynamic"}), "cuda:1")
    check_config_on(config_from_dict({"method": "int8-dynamic"}), "cpu")  # the CPU has the kernel: no error


def test_to_device_and_for_timing_on_cpu():
    x = {"a": torch.ones(2), "b": (torch.zeros(1), 3)}
    y = to_device(x, "cpu")
    assert y["b"][1] == 3 and torch.equal(y["a"], x["a"]) and isinstance(y["b"], tuple)
    m = nn.Linear(2, 2)
    assert for_timing(m, None, x["a"], "cpu") == (m, None, x["a"])  # the CPU measures the objects themselves


def test_study_device_typo_is_refused_first(tmp_path):
    from effml.study.user import study

    with pytest.raises(ConfigError, match="device 'tpu' is not a device: use cpu, cuda or cuda:N"):
        study(nn.Linear(4, 2), lambda m: 1.0, example_inputs=torch.ones(1, 4), device="tpu",
              store=str(tmp_path / "r.db"))
    assert not (tmp_path / "r.db").exists()


def test_study_on_cuda_records_the_gpu(tmp_path):
    device = _cuda()
    from effml.study.user import study

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 8)).eval()
    x = torch.randn(16, 32)

    def evaluate(m):
        assert next(m.parameters()).device.type == "cuda"  # made and evaluated on the GPU
        with torch.no_grad():
            return {"accuracy": float((m(x.to(device)).argmax(1) == 0).float().mean())}

    res = study(model, evaluate, example_inputs=(x,), plans=["prune-fine-50%", "linear-8b", "int8-dynamic"],
                store=str(tmp_path / "r.db"), measure_budget_s=0.1, devices=("h100-sxm",), device="cuda")
    assert [r["name"] for r in res.rows] == ["baseline", "prune-fine-50%", "linear-8b"]
    assert dict(res.skipped)["int8-dynamic"].startswith("not on cuda:0: int8-dynamic: torch.ao")
    name = torch.cuda.get_device_name(0)
    major, minor = torch.cuda.get_device_capability(0)
    for r in res.rows:
        assert r["device"] == "cuda:0" and r["device_name"] == name and r["device_capability"] == f"{major}.{minor}"
        assert r["latency_p50_s"] > 0
        # resident fp32 weights: (32*64 + 64 + 64*8 + 8) * 4 = 10,784 bytes; the forward allocates more on top
        assert r["peak_mem_bytes"] >= 10_784


def test_compress_speed_check_on_cuda():
    device = _cuda()
    from effml.compress.workflow import Measure, compress

    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10)).eval()
    rep = compress(model, [config_from_dict({"method": "fine", "sparsity": 0.5})], example_inputs=(torch.randn(4, 64),),
                   measure=Measure(hw=None, rounds=5, device="cuda"))
    assert rep.speed.measured.device == device
    assert rep.speed.measured.device_name == torch.cuda.get_device_name(0)
    assert rep.speed.measured.rounds == 5 and rep.speed.measured.before_s > 0
    with pytest.raises(ConfigError, match="int8-dynamic: torch.ao"):
        compress(nn.Sequential(nn.Linear(64, 10)).eval(), [config_from_dict({"method": "int8-dynamic"})],
                 example_inputs=(torch.randn(4, 64),), measure=Measure(hw=None, rounds=5, device="cuda"))
