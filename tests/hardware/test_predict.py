"""Roofline prediction on hand-built profiles: every number below is worked out in a comment."""

import pytest

from effml.cost.profile import ModuleInfo, OpEvent, Profile
from effml.errors import EffmlError
from effml.hardware import get_device, predict, predict_many
from effml.hardware.energy import energy_per_byte, energy_per_flop, energy_scale

H100_BF16, H100_BW = 989.5e12, 3.35e12


def ev(op, cat, flops, read, written, dtype="bf16"):
    return OpEvent(op, cat, "forward", ("layer",), flops, (flops or 0) // 2, read, written, dtype)


def prof(events, params=0, peak_act=0, unsupported=None, calls=1, param_bytes=0):
    return Profile(events, params, {"": ModuleInfo("M", params, calls)}, peak_act, unsupported or {},
                   param_bytes=param_bytes)


N = 4096
# (N x N) @ (N x N) in bf16: 2 N^3 FLOPs, 3 N^2 x 2 bytes
GEMM = ev("aten.mm", "matmul", 2 * N**3, 2 * N * N * 2, N * N * 2)
# (1 x N) @ (N x N) in bf16: 2 N^2 FLOPs; reads N + N^2 elements, writes N, at 2 bytes
GEMV = ev("aten.mm", "matmul", 2 * N * N, (N + N * N) * 2, N * 2)


def test_gemm_is_compute_bound_on_h100():
    p = predict(prof([GEMM]), "h100")
    op = p.ops[0]
    # compute 2*4096^3 / 989.5e12 = 138.9 us; memory 3*4096^2*2 / 3.35e12 = 30.0 us
    assert op.cost.compute_s == pytest.approx(2 * N**3 / H100_BF16)
    assert op.cost.memory_s == pytest.approx(3 * N * N * 2 / H100_BW)
    assert op.cost.bound == "compute" and p.bound == "compute"
    assert p.time_s == pytest.approx(138.9e-6, rel=1e-3)  # catalog devices: no overhead, pure roofline
    # intensity 2N^3 / 6N^2 = N/3 = 1365 FLOP/B, above the ridge 989.5e12 / 3.35e12 = 295.4
    assert op.intensity == pytest.approx(N / 3)
    assert p.ridge_point == pytest.approx(295.37, rel=1e-3)


def test_gemv_is_memory_bound_on_h100():
    p = predict(prof([GEMV]), "h100")
    # memory (4096 + 4096^2 + 4096) * 2 B / 3.35e12 = 10.02 us >> compute 8.4e-3 us
    assert p.bound == "memory"
    assert p.time_s == pytest.approx((N + N * N + N) * 2 / H100_BW)
    assert p.ops[0].intensity == pytest.approx(1.0, rel=1e-3)  # ~1 FLOP per byte, far below the ridge


def test_totals_are_per_call_sums_not_roofline_of_sums():
    p = predict(prof([GEMM, GEMV]), "h100")
    # per call: 138.9 us (compute) + 10.02 us (memory); a roofline of the summed FLOPs/bytes would give 138.9 us
    assert p.time_s == pytest.approx(2 * N**3 / H100_BF16 + (N + N * N + N) * 2 / H100_BW)
    assert p.compute_s == pytest.approx(2 * N**3 / H100_BF16)
    assert p.memory_s == pytest.approx((N + N * N + N) * 2 / H100_BW)


def test_energy_split_uses_horowitz_times_device_scale():
    p = predict(prof([GEMM]), "h100")
    # 45 nm: bf16 FLOP = (1.1 + 0.4) / 2 = 0.75 pJ; DRAM byte = 640 / 4 = 160 pJ
    assert energy_per_flop("bf16") == pytest.approx(0.75e-12)
    assert energy_per_byte("dram") == pytest.approx(160e-12)
    # scale = 700 W / (989.5e12 * 0.75e-12 + 3.35e12 * 160e-12) = 700 / 1278.1 = 0.5477
    s = energy_scale(get_device("h100")).factor
    assert s == pytest.approx(700 / (989.5e12 * 0.75e-12 + 3.35e12 * 160e-12))
    e = p.to_dict()["energy_j"]
    assert e["compute"] == pytest.approx(2 * N**3 * 0.75e-12 * s)
    assert e["memory"] == pytest.approx(3 * N * N * 2 * 160e-12 * s)
    assert e["total"] == pytest.approx(e["compute"] + e["memory"])


def test_power_never_exceeds_tdp_at_the_roofline():
    # at the ridge point both terms saturate: power = TDP by construction of the scale
    for dev in ("h100", "a100", "t4", "rpi5", "stm32f746"):
        d = get_device(dev)
        dt = d.energy_ref_dtype
        f = d.peak_flops(dt)  # one second of peak compute...
        b = d.bandwidth  # ...and of full bandwidth
        p = predict(prof([ev("aten.mm", "matmul", int(f), int(b), 0, dt)]), d, dtype=dt)
        assert p.energy.total / p.time_s == pytest.approx(d.tdp, rel=1e-6)


def test_usd_per_million():
    p = predict(prof([GEMM]), "h100", batch=8)
    # 138.9 us per step of 8 inferences at $2.99/h: 138.9e-6 / 8 * 1e6 * 2.99 / 3600 = $0.01442 per 1M
    assert p.usd_per_1m == pytest.approx(2 * N**3 / H100_BF16 / 8 * 1e6 * 2.99 / 3600)
    assert predict(prof([GEMM]), "h100", price_per_hour=1.0).usd_per_1m == pytest.approx(
        2 * N**3 / H100_BF16 * 1e6 / 3600)
    assert predict(prof([GEMM]), "orin-nano").usd_per_1m is None  # edge: unit price, no hourly price


def test_dtype_reprices_float_ops():
    fp32 = ev("aten.mm", "matmul", 2 * N**3, 2 * N * N * 4, N * N * 4, dtype="fp32")
    p = predict(prof([fp32]), "h100", dtype="bf16")
    assert p.ops[0].bytes == 3 * N * N * 2  # fp32 bytes x 2/4
    assert p.ops[0].cost.compute_s == pytest.approx(2 * N**3 / H100_BF16)
    p32 = predict(prof([fp32]), "h100")  # default: the counted dtype, fp32 at 67 TFLOP/s
    assert p32.dtype == "fp32" and p32.time_s == pytest.approx(2 * N**3 / 67e12)


def test_integer_bookkeeping_ops_keep_their_bytes():
    idx = ev("aten.arange", "memory", 0, 0, 8 * 1024, dtype="int64")
    p = predict(prof([GEMV, idx]), "h100", dtype="fp8")
    assert p.ops[1].bytes == 8 * 1024 and p.ops[1].dtype == "fp8"


def test_dtype_the_device_lacks_raises():
    with pytest.raises(EffmlError, match="T4 has no bf16"):
        predict(prof([GEMM]), "t4")  # profile counted in bf16
    with pytest.raises(EffmlError, match="no int4"):
        predict(prof([GEMM]), "h100", dtype="int4")
    with pytest.raises(EffmlError, match="unknown"):
        predict(prof([GEMM]), "h100", dtype="int3")


def test_fit_gpu_and_mcu():
    p = predict(prof([GEMV], params=7_000_000_000, peak_act=1_000_000), "l4", dtype="bf16",
                kv_cache_bytes=2e9)
    # 7e9 x 2 B + 1 MB + 2 GB = 16.001 GB of 24 GB
    assert p.fit.fits and p.fit.checks[0].need_bytes == pytest.approx(16.001e9)
    big = predict(prof([GEMV], params=70_000_000_000), "l4", dtype="bf16")
    # 140 GB vs 24 GB: misses by 116 GB
    assert not big.fit.fits
    assert big.fit.checks[0].short_by_bytes == pytest.approx(116e9)
    assert "misses by 116 GB" in big.fit.message
    # MCU at int8: 1.2 M params -> 1.2 MB > 1 MiB flash; 200 KB fp32 activations -> 50 KB int8 in 320 KiB SRAM
    mcu = predict(prof([ev("aten.mm", "matmul", 1000, 1000, 1000, "fp32")], params=1_200_000, peak_act=200_000),
                  "stm32f746", dtype="int8")
    flash, sram = mcu.fit.checks
    assert flash.memory == "flash" and not flash.fits
    assert flash.short_by_bytes == pytest.approx(1_200_000 - 1024 * 1024)
    assert sram.fits and sram.need_bytes == pytest.approx(50_000)


def test_unsupported_ops_make_a_lower_bound():
    p = predict(prof([GEMM, ev("aten.foo", "unsupported", None, 100, 100)], unsupported={"aten.foo": 1}), "h100")
    assert p.lower_bound and p.to_dict()["unsupported"] == {"aten.foo": 1}


def test_predict_many_side_by_side():
    res = predict_many(prof([GEMV]), ["h100", "h200", "a100"], dtype="bf16")
    assert list(res) == ["h100-sxm", "h200", "a100-80gb"]
    # memory-bound: time scales with 1 / bandwidth: H200 / H100 = 3.35 / 4.8
    assert res["h200"].time_s / res["h100-sxm"].time_s == pytest.approx(3.35 / 4.8)


def test_to_dict_keys():
    d = predict(prof([GEMM, GEMV]), "h100").to_dict(ops=True)
    for k in ("time_s", "bound", "energy_j", "usd_per_1m", "fits", "intensity", "ridge_point", "ops"):
        assert k in d
    assert {"compute", "memory"} <= set(d["energy_j"])
    assert d["bound"] in ("compute", "memory") and len(d["ops"]) == 2


def test_int4_checkpoint_bytes_count_group_params_and_fp16_embeddings():
    # GPTQ/AWQ int4 at group 128: per weight 4 bits + per group a 16-bit scale and a 4-bit packed zero:
    # 4 + 20/128 = 4.15625 bits = 0.51953125 B; the embeddings and output head stay fp16 (2 B).
    # Llama-2-7B: 6,738,415,616 params of which 2·32000·4096 = 262,144,000 embedding/head:
    # 6,476,271,616 x 0.51953125 + 262,144,000 x 2 = 3,364,625,488 + 524,288,000 = 3,888,913,488 B
    # (params x 0.5 = 3,369,207,808 B said before, 13% less than the checkpoint holds).
    from effml.hardware.capacity import stored_weights

    s = stored_weights(6_738_415_616, "int4", 262_144_000)
    assert s.bytes == 6_476_271_616 * (4 + 20 / 128) / 8 + 262_144_000 * 2 == 3_888_913_488
    assert "4.15625 bits/weight" in s.note and "kept in fp16" in s.note
    assert stored_weights(1000, "int8", 100).bytes == 900 + 200  # int8 weights, fp16 embeddings
    assert stored_weights(1000, "bf16", 100).bytes == 2000 and stored_weights(1000, "bf16").note == ""


def test_predict_fit_uses_the_int4_checkpoint_bytes():
    # a profile of 1,000,000 params, 200,000 of them embeddings, predicted in int4 on an A100 (it has int4)
    p = prof([GEMV], params=1_000_000)
    p.meta["embedding_params"] = 200_000
    pred = predict(p, "a100", dtype="int4")
    assert pred.fit.weights_bytes == 800_000 * 0.51953125 + 200_000 * 2 == 815_625
    assert "g128" in pred.fit.weights_note and pred.fit.to_dict()["weights_note"] == pred.fit.weights_note
