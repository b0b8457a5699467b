"""cost.present: Profile's short str (totals, top ops, what had no formula), its repr and its rich tables."""

import torch
from rich.console import Console

from effml.cost.counter import profile
from effml.cost.profile import ModuleInfo, OpEvent, Profile
from effml.models import resolve


def _hand_made() -> Profile:
    """Two matmuls of 600 FLOPs, an add of 200 and one op without a formula, all in module 'fc'."""
    mm = OpEvent("aten.mm", "matmul", "forward", ("fc",), 600, 300, 100, 20, "fp32")
    add = OpEvent("aten.add", "elementwise", "forward", ("fc",), 200, 0, 40, 20, "fp32")
    odd = OpEvent("aten.odd", "other", "forward", ("fc",), None, 0, 8, 8, "fp32")
    return Profile([mm, mm, add, odd], params=1_234, modules={"": ModuleInfo("Net", 1_234, 1),
                                                              "fc": ModuleInfo("Linear", 1_234, 1)},
                   peak_activation_bytes=2048, unsupported={"aten.odd": 1},
                   meta={"model": "net", "inputs": [[2, 3]], "dtype": "fp32", "device": "cpu"})


def test_str_is_a_short_summary_with_the_totals():
    text = str(_hand_made())
    lines = text.splitlines()
    assert lines[0] == "Profile of net: one forward pass, inputs 2x3, fp32 on cpu"
    # FLOPs 600 + 600 + 200 = 1,400 (lower bound: aten.odd has no formula); MACs 600; bytes 2·120 + 60 + 16 = 316
    assert "params 1,234 | FLOPs 1.4 k (lower bound) | MACs 600 | bytes moved 316 B" in lines[1]
    assert "4 op calls" in lines[1]
    # shares of 1,400 FLOPs: mm 1,200 = 85.7%, add 200 = 14.3%
    assert lines[2] == "  top ops by FLOPs: aten.mm 85.7% (2 calls), aten.add 14.3% (1 calls)"
    assert lines[3] == "  no FLOP formula (FLOPs are a lower bound): aten.odd x1"
    assert repr(_hand_made()) == "Profile(model='net', params=1,234, flops=1,400, events=4, unsupported=1)"


def test_str_of_a_real_profile_stays_short():
    spec = resolve(config="gpt2", seq=32)
    p = profile(spec.model, *spec.args, forward_kwargs=spec.kwargs, name=spec.name)
    assert len(p.events) > 400  # ~200 characters each in the dataclass repr the short one replaces
    text = str(p)
    assert len(text) < 800 and "params 124,439,808" in text and "aten.mm" in text
    assert len(repr(p)) < 200


def test_table_renders_the_profile_tables():
    spec = resolve(model="lenet5")
    with torch.no_grad():
        p = profile(spec.model, *spec.args, name=spec.name)
    con = Console(width=160, record=True)
    con.print(p.table(by="module", depth=1))
    out = con.export_text()
    assert "lenet5 — cost of one pass" in out and "61,706" in out and "features" in out
    con = Console(width=160, record=True)
    con.print(p.table(by="op"))
    assert "aten.convolution" in con.export_text()
