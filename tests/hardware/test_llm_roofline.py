"""Llama-2-7B bf16 on H100, from the catalog numbers: decode memory-bound, prefill compute-bound."""

import pytest

from effml import configs
from effml.cost.counter import profile
from effml.hardware import get_device, predict
from effml.hardware.kv import decode_inputs, kv_cache_bytes

PARAMS = 6_738_415_616  # Llama-2-7B published parameter count (configs/llama-2-7b.json)
EMBED = 32000 * 4096  # the input embedding: a gather, not a matmul
H100 = get_device("h100")
PEAK, BW = H100.peak_flops("bf16"), H100.bandwidth  # 989.5e12 FLOP/s, 3.35e12 B/s


@pytest.fixture(scope="module")
def llama():
    cfg = configs.load("llama-2-7b")
    return configs.build(cfg, dtype="bf16", device="meta")


@pytest.fixture(scope="module")
def decode(llama):
    args, kwargs = decode_inputs(llama, batch=1, seq=1, kv_len=2048, dtype="bf16")
    p = profile(llama, *args, forward_kwargs=kwargs)
    kv = kv_cache_bytes(llama.config, 1, 2049, "bf16")
    return p, predict(p, H100, dtype="bf16", kv_cache_bytes=kv)


def test_decode_attends_over_kv_len_plus_one(decode):
    p, _ = decode
    att = [e for e in p.events if e.category == "attention"]
    assert len(att) == 32  # one fused SDPA per layer
    # QK^T and AV: 2 x (32 heads x 1 query x 2049 keys x 128) MACs per layer
    assert all(e.macs == 2 * 32 * 1 * 2049 * 128 for e in att)


def test_decode_is_memory_bound_at_weight_bytes_over_bandwidth(decode):
    _, pred = decode
    weights = PARAMS * 2  # 13.48 GB in bf16
    kv_read = 2 * 32 * 2049 * 4096 * 2  # K and V, 32 layers, 2049 positions, d=4096, bf16: 1.074 GB
    assert pred.bound == "memory"
    # weights / bw = 13.48e9 / 3.35e12 = 4.02 ms: "about 4 ms"
    assert weights / BW == pytest.approx(4.02e-3, rel=1e-3)
    assert pred.time_s == pytest.approx(weights / BW, rel=0.10)
    # closer: every weight and every cached K/V read once (+ < 1% activations); embedding reads 1 row only
    assert pred.time_s == pytest.approx((weights - EMBED * 2 + kv_read) / BW, rel=0.01)
    assert pred.fits and pred.fit.kv_cache_bytes == pytest.approx(kv_read)


def test_prefill_2048_is_compute_bound_at_flops_over_peak(llama):
    args, kwargs = configs.example_inputs(configs.load("llama-2-7b"), batch=1, seq=2048, device="meta", dtype="bf16")
    pred = predict(profile(llama, *args, forward_kwargs=kwargs), H100, dtype="bf16")
    assert pred.bound == "compute"
    # matmul FLOPs 2 x (params - embedding) x T = 2 x 6.607e9 x 2048 = 27.06e12 -> 27.35 ms at 989.5 TFLOP/s
    matmul = 2 * (PARAMS - EMBED) * 2048 / PEAK
    # + causal attention 4 x T^2/2 x d x L = 4 x 2048^2 / 2 x 4096 x 32 = 1.10e12 FLOPs (+1.1 ms, ~4%)
    attention = 4 * 2048 * 2049 / 2 * 4096 * 32 / PEAK
    assert pred.compute_s == pytest.approx(matmul + attention, rel=0.02)
    # the rest is unfused elementwise traffic (norms, rotary, SiLU, residuals) at 3.35 TB/s: < 45% on top
    assert pred.compute_s < pred.time_s < 1.45 * pred.compute_s


def test_7b_bf16_does_not_fit_an_orin_nano_and_says_by_how_much(decode):
    p, _ = decode
    kv = 2 * 32 * 2049 * 4096 * 2
    pred = predict(p, "orin-nano", dtype="bf16", kv_cache_bytes=kv)
    # 13.48 GB of weights + 1.07 GB of KV cache + activations vs 8 GB: misses by ~6.6 GB
    need = PARAMS * 2 + kv + p.peak_activation_bytes
    assert not pred.fits
    assert pred.fit.checks[0].short_by_bytes == pytest.approx(need - 8e9)
    assert "misses by" in pred.fit.message
