"""The catalog: every figure has a source, datasheet numbers, derivations, lookup errors."""

import json

import pytest

from effml.errors import EffmlError
from effml.hardware import get_device, list_devices
from effml.hardware.catalog import DeviceError, device_from_dict, load_local

REQUIRED = {"stm32f746", "stm32h743", "rpi5", "jetson-orin-nano-8gb", "t4", "l4", "a100-80gb", "h100-sxm", "h200",
            "rtx4090"}


def test_catalog_has_every_required_device():
    assert REQUIRED <= {d.key for d in list_devices()}


def test_every_figure_has_a_source():
    n = 0
    for dev in list_devices():
        for path, fig in dev.figures():
            assert fig.source.strip(), f"{dev.key}.{path} has no source"
            n += 1
    assert n > 100  # 10 devices x (peaks + sparse + bw + memory + power + price)


def test_a_figure_without_source_is_rejected():
    raw = {"name": "x", "kind": "gpu", "peak_flops": {"fp32": {"value": 1e12, "source": ""}},
           "mem_bw": {"value": 1e11, "source": "s"}, "memory_bytes": {"value": 1e9, "source": "s"},
           "energy_ref_dtype": "fp32"}
    with pytest.raises(DeviceError, match="no source"):
        device_from_dict("x", raw)


@pytest.mark.parametrize("name,dtype,value", [
    ("h100", "bf16", 989.5e12), ("h100", "int8", 1979e12), ("h100", "fp32", 67e12),  # NVIDIA H100 SXM datasheet: 989 / 1979 / 67
    ("h200", "bf16", 989.5e12), ("a100", "bf16", 312e12), ("a100", "int8", 624e12), ("a100", "fp32", 19.5e12),
    ("l4", "bf16", 121e12), ("l4", "int8", 242e12), ("t4", "fp16", 65e12), ("t4", "int8", 130e12),
    ("rtx4090", "fp16", 165.2e12), ("rtx4090", "int8", 660.6e12), ("orin-nano", "int8", 20e12),
])
def test_dense_peaks_match_design(name, dtype, value):
    assert get_device(name).peak_flops(dtype) == pytest.approx(value)


@pytest.mark.parametrize("name,bw,mem", [
    ("h100", 3.35e12, 80e9), ("h200", 4.8e12, 141e9), ("a100", 2.039e12, 80e9), ("l4", 300e9, 24e9),
    ("t4", 320e9, 16e9), ("rtx4090", 1008e9, 24e9), ("orin-nano", 68e9, 8e9)])
def test_bandwidth_and_capacity(name, bw, mem):
    d = get_device(name)
    assert d.bandwidth == pytest.approx(bw)
    assert d.capacity_bytes == pytest.approx(mem)


def test_rpi5_peak_is_derived():
    d = get_device("rpi5")
    # 4 cores x 2.4 GHz x (2 NEON FMA pipes x 4 fp32 lanes x 2 FLOPs) = 153.6 GFLOP/s
    assert d.peak_flops("fp32") == pytest.approx(4 * 2.4e9 * 16)
    assert "4 cores x 2.4 GHz" in d.peak["fp32"].source
    # LPDDR4X-4267 x 32-bit bus = 17.07 GB/s
    assert d.bandwidth == pytest.approx(4267e6 * 4, rel=1e-3)


def test_mcus_have_sram_flash_and_int8():
    f7, h7 = get_device("stm32f746"), get_device("stm32h743")
    assert f7.sram_bytes.value == 320 * 1024 and f7.flash_bytes.value == 1024 * 1024  # MCUNet: 320 KB / 1 MB
    assert h7.sram_bytes.value == 512 * 1024 and h7.flash_bytes.value == 2 * 1024 * 1024  # ST DS12110
    assert f7.peak_flops("int8") == pytest.approx(216e6 * 2 * 2)  # 216 MHz x 2 MACs/cycle (SMLAD) x 2 ops
    assert h7.peak_flops("int8") == pytest.approx(480e6 * 2 * 2)


def test_sparse_peaks_are_separate_and_twice_dense():
    d = get_device("h100")
    assert d.sparse_peak_flops("bf16") == pytest.approx(2 * d.peak_flops("bf16"), rel=1e-3)
    assert d.peak_flops("bf16") < d.sparse_peak_flops("bf16")  # predictions read peak_flops: dense


def test_scaling_laws_api_contract():
    # issue 8 calls exactly this
    dev = get_device("h100")
    assert dev.name == "H100-SXM"
    assert dev.peak_flops("bf16") == 989.5e12
    assert dev.price_per_hour == pytest.approx(2.99)
    assert get_device("rpi5").price_per_hour is None and get_device("rpi5").unit_price_usd == 80.0


def test_unknown_device_suggests_close_names():
    with pytest.raises(EffmlError, match=r"unknown device 'h10'.*did you mean.*h100-sxm"):
        get_device("h10")


def test_dtype_the_device_lacks_is_an_error_not_a_fallback():
    with pytest.raises(DeviceError, match=r"T4 has no bf16 peak.*fp16"):  # Turing has no bf16
        get_device("t4").peak_flops("bf16")


def test_aliases_and_case():
    assert get_device("H100").key == get_device("h100_sxm").key == "h100-sxm"
    assert get_device("Raspberry Pi 5").key == "rpi5"


def test_local_missing_says_run_calibrate(tmp_path, monkeypatch):
    monkeypatch.setenv("EFFML_LOCAL_DEVICE", str(tmp_path / "none.json"))
    with pytest.raises(EffmlError, match="effml calibrate"):
        get_device("local")
    with pytest.raises(EffmlError, match="effml calibrate"):
        load_local(tmp_path / "none.json")


def test_device_json_roundtrip(tmp_path):
    d = get_device("l4")
    raw = d.to_dict()
    entry = {k: v for k, v in raw.items() if k != "key"}
    p = tmp_path / "l4.json"
    p.write_text(json.dumps({"devices": {"my-l4": entry}}))
    d2 = get_device(str(p))
    assert d2.peak_flops("bf16") == d.peak_flops("bf16") and d2.bandwidth == d.bandwidth
