import pytest
import torch

import effml
from effml.errors import ConfigError
from effml.nas.budgets import budget_for, check_reachable, cost_of
from effml.nas.spaces import _validated, get_space

# one stage, one block: stem conv 1->8 (k3, s2), depthwise 8 (k3), project 8->8, head 8->16, linear 16->10
TINY = {"family": "mobilenetv2", "input_channels": 1, "classes": 10, "stem": 8, "head": 16, "width": [1.0],
        "resolution": [8], "stages": [{"channels": 8, "stride": 1, "depth": [1], "kernel": [3], "expand": [1]}]}


def test_tiny_candidate_by_hand():
    c = cost_of(_validated("tiny", TINY), {}, "stm32f746")
    # params of the deployment form (BN folded: one bias per conv output channel):
    #   stem 8*1*9 + 8 = 80; depthwise 8*9 + 8 = 80; project 8*8 + 8 = 72; head 16*8 + 16 = 144;
    #   classifier 16*10 + 10 = 170  -> 546 params = 546 B of int8 flash
    assert c.params == 546 and c.flash_bytes == 546
    # MACs: stem 8x4x4 outputs x 9 = 1152; depthwise 128 x 9 = 1152; project 128 x 8 = 1024;
    #   head 16x4x4 x 8 = 2048; linear 160  -> 5536
    assert c.macs == 5536
    # SRAM, in elements (= int8 bytes): input 1x8x8 = 64 held throughout; the peak of live tensors is 384 =
    #   block input x (128) + depthwise out (128) + project out (128) when the projection runs
    #   (the same 384 recurs at the residual add and at the head: 128 in + 256 out); 64 + 384 = 448 B
    assert c.sram_bytes == 448


def test_winner_numbers_are_the_counters():
    mb = get_space("mobilenetv2")
    arch = {**mb.smallest(), "width": 0.5, "resolution": 64}
    c = cost_of(mb, arch, "stm32f746")
    with torch.device("meta"):
        model = mb.build(arch, deploy=True)
    p = effml.profile(model, torch.empty(1, 1, 64, 64, device="meta"))
    assert c.flash_bytes == p.memory("int8") == p.params
    assert c.sram_bytes == (p.peak_activation_bytes + 64 * 64 * 4) // 4
    assert c.latency_s == pytest.approx(effml.predict(p, "stm32f746", dtype="int8").time_s)


def test_budget_from_catalog_and_violations():
    b = budget_for("stm32f746")
    assert (b.memory, b.sram_bytes, b.flash_bytes) == ("mcu", 320 * 1024, 1024 * 1024)
    mb = get_space("mobilenetv2")
    big = cost_of(mb, mb.largest(), "stm32f746")
    over = b.violations(big)
    # 2,503,210 params = 2.39 MiB of int8 flash; its SRAM peak, 322,560 B (w1.0 r96: the expand-6 tensor of
    # stage 1, 96 x 48 x 48 = 221,184, beside its input 36,864, its stride-2 output 55,296 and the 9,216 B
    # image), stays just under 320 KiB = 327,680 B: on the F746 only flash binds in this space ...
    assert set(over) == {"flash"} and over["flash"] == pytest.approx(2_503_210 / 1_048_576)
    assert big.sram_bytes == 221_184 + 36_864 + 55_296 + 9_216
    # ... and SRAM does under a 256 KiB budget
    assert set(budget_for("stm32f746", sram_kb=256).violations(big)) == {"sram", "flash"}
    cons = b.constraints(big)  # Optuna's convention: need / have - 1, feasible when <= 0
    assert cons["flash"] == pytest.approx(2_503_210 / 1_048_576 - 1) and cons["sram"] < 0
    small = cost_of(mb, mb.smallest(), "stm32f746")
    assert b.violations(small) == {} and all(v <= 0 for v in b.constraints(small).values())
    assert budget_for("stm32f746", latency_ms=5).latency_s == 0.005


def test_device_without_memory_figures():
    with pytest.raises(ConfigError, match="'h100-sxm' \\(gpu\\) has no sram_bytes / flash_bytes"):
        budget_for("h100-sxm", memory="mcu")
    with pytest.raises(ConfigError, match="'stm32f746' \\(mcu\\) has no memory_bytes"):
        budget_for("stm32f746", memory="dram")
    assert budget_for("rpi5").memory == "dram"  # a CPU: weights + activations vs its 8 GB


def test_unreachable_budget_is_said_before_searching():
    mb = get_space("mobilenetv2")
    # the smallest architecture needs 11,264 B of SRAM (see test_search) and ~206 KB of flash
    with pytest.raises(ConfigError, match="no architecture of space 'mobilenetv2' can meet.*breaks sram.*--sram-kb"):
        check_reachable(mb, budget_for("stm32f746", sram_kb=8))
    assert check_reachable(mb, budget_for("stm32f746")).sram_bytes == 11264
