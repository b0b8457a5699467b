"""Micro-benchmarks for calibration: a registry of small op workloads per op category, all fp32.

Each `Case` is a callable plus its inputs: the nn.Module a model would call (nn.Linear, nn.Conv2d,
nn.BatchNorm2d, ...) so that the Python cost of a real layer's forward is in the per-op overhead, or a
function for what models write inline (x + y, softmax, SDPA). Calibration counts it with `effml.profile`
(so its FLOPs, bytes and category are exactly what the counter reports inside real models), times it,
and fits that category's overhead and efficiencies from the cases. Shapes span what CNNs and transformers run at batch 1 to 32:
tiny (overhead-dominated), cache-resident and DRAM-sized. `quick=True` keeps one or two cases each.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from effml.registries import Registry

# op category -> fn(quick) returning that category's cases; `@CASES.register("matmul")` adds one
CASES: Registry[Callable[[bool], list["Case"]]] = Registry("micro-benchmark category")


@dataclass
class Case:
    category: str
    label: str
    fn: Callable[..., torch.Tensor]
    inputs: tuple


class FnModule(torch.nn.Module):
    """Wrap a function so `effml.profile` can count it."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, *xs):
        return self.fn(*xs)


def _r(*shape) -> torch.Tensor:
    return torch.randn(*shape)


@CASES.register("view")
def _view(quick: bool) -> list[Case]:
    return [Case("view", "view(-1)", lambda x: x.view(-1), (_r(64, 64),)),
            Case("view", "transpose", lambda x: x.transpose(0, 1), (_r(64, 64),))]


@CASES.register("matmul")
def _matmul(quick: bool) -> list[Case]:
    # rows M from 1 (a GEMV: batch-1 Linear) to 1024: small-M GEMMs run far below peak on CPUs
    shapes = [(1, 64, 64), (1, 1024, 1024), (16, 768, 768), (64, 512, 512), (256, 1024, 1024)] if quick else \
        [(1, 64, 64), (8, 256, 256), (1, 1024, 1024), (1, 768, 3072), (4, 768, 768), (16, 768, 3072),
         (16, 3072, 768), (32, 768, 768), (64, 512, 512), (128, 768, 3072), (256, 1024, 1024),
         (512, 768, 768), (1024, 1024, 1024)]
    out = []
    for m, k, n in shapes:  # nn.Linear: (m, k) @ (k, n) + bias
        out.append(Case("matmul", f"linear {m}x{k}x{n}", torch.nn.Linear(k, n), (_r(m, k),)))
    if not quick:
        out.append(Case("matmul", "bmm 12x32x64x32", torch.bmm, (_r(12, 32, 64), _r(12, 64, 32))))
        # an LM head: few rows against a 50 MB weight (no bias: aten.mm)
        out.append(Case("matmul", "mm 16x768x16384", torch.mm, (_r(16, 768), _r(768, 16384))))
    return out


@CASES.register("conv")
def _conv(quick: bool) -> list[Case]:
    # (batch, c_in, hw, c_out, kernel, groups)
    shapes = [(1, 3, 32, 16, 3, 1), (1, 64, 32, 64, 3, 1), (8, 64, 32, 64, 3, 1), (1, 96, 56, 96, 3, 96)] if quick else \
        [(1, 1, 28, 6, 5, 1), (1, 3, 32, 16, 3, 1), (1, 64, 32, 64, 3, 1), (8, 64, 32, 64, 3, 1),
         (8, 3, 32, 64, 3, 1), (1, 256, 8, 256, 3, 1), (4, 256, 28, 64, 1, 1), (8, 128, 16, 128, 3, 1),
         (32, 64, 32, 64, 3, 1), (1, 96, 56, 96, 3, 96), (8, 144, 28, 144, 3, 144), (1, 32, 112, 32, 3, 32),
         (8, 32, 56, 192, 1, 1), (8, 96, 56, 96, 3, 96)]
    out = []
    for b, ci, hw, co, k, g in shapes:
        conv = torch.nn.Conv2d(ci, co, k, padding=k // 2, groups=g, bias=False)  # CNNs before a BatchNorm
        out.append(Case("conv", f"conv {b}x{ci}x{hw}x{hw}->{co} k{k} g{g}", conv, (_r(b, ci, hw, hw),)))
    return out


@CASES.register("attention")
def _attention(quick: bool) -> list[Case]:
    shapes = [(1, 4, 64, 32), (8, 12, 32, 64)] if quick else \
        [(1, 4, 64, 32), (8, 4, 64, 32), (1, 12, 32, 64), (8, 12, 32, 64), (32, 12, 32, 64), (1, 12, 256, 64)]
    return [Case("attention", f"sdpa {b}x{h}x{t}x{d} causal", lambda q, k, v: F.scaled_dot_product_attention(
        q, k, v, is_causal=True), (_r(b, h, t, d), _r(b, h, t, d), _r(b, h, t, d))) for b, h, t, d in shapes]


def _sizes(quick: bool) -> list[int]:
    return [64, 65536, 1 << 20] if quick else [64, 4096, 65536, 1 << 18, 1 << 20, 1 << 22]


@CASES.register("elementwise")
def _elementwise(quick: bool) -> list[Case]:
    out = [Case("elementwise", f"add {n}", torch.add, (_r(n), _r(n))) for n in _sizes(quick)]
    if not quick:
        out += [Case("elementwise", f"mul {n}", torch.mul, (_r(n), _r(n))) for n in (4096, 1 << 20)]
    return out


@CASES.register("activation")
def _activation(quick: bool) -> list[Case]:
    out = [Case("activation", f"relu {n}", torch.nn.ReLU(), (_r(n),)) for n in _sizes(quick)]
    if not quick:
        out += [Case("activation", f"gelu {n}", torch.nn.GELU(), (_r(n),)) for n in (4096, 1 << 20)]
        out += [Case("activation", f"relu6 {n}", torch.nn.ReLU6(), (_r(n),)) for n in (4096, 1 << 20)]
    return out


@CASES.register("norm")
def _norm(quick: bool) -> list[Case]:
    rows = [1, 64, 2048] if quick else [1, 32, 256, 2048]
    out = [Case("norm", f"layer_norm {r}x768", torch.nn.LayerNorm(768), (_r(r, 768),)) for r in rows]
    bn = [(1, 16, 32), (8, 64, 32)] if quick else [(1, 16, 32), (1, 64, 32), (8, 64, 32), (8, 256, 14), (8, 96, 56)]
    for b, c, hw in bn:
        out.append(Case("norm", f"batch_norm {b}x{c}x{hw}x{hw}", torch.nn.BatchNorm2d(c).eval(), (_r(b, c, hw, hw),)))
    return out


@CASES.register("softmax")
def _softmax(quick: bool) -> list[Case]:
    rows = [4, 1024] if quick else [4, 64, 1024, 8192]
    return [Case("softmax", f"softmax {r}x128", lambda x: torch.softmax(x, -1), (_r(r, 128),)) for r in rows]


@CASES.register("reduction")
def _reduction(quick: bool) -> list[Case]:
    out = [Case("reduction", f"sum {n}", torch.sum, (_r(n),)) for n in ((64, 1 << 20) if quick else (64, 65536, 1 << 22))]
    out += [Case("reduction", f"mean(2,3) {b}x512x4x4", lambda x: x.mean(dim=(2, 3)), (_r(b, 512, 4, 4),))
            for b in ((1,) if quick else (1, 32))]
    return out


@CASES.register("pool")
def _pool(quick: bool) -> list[Case]:
    shapes = [(1, 16, 32), (8, 64, 32)] if quick else [(1, 6, 28), (1, 64, 32), (8, 64, 32), (8, 256, 16)]
    out = [Case("pool", f"max_pool2d {b}x{c}x{hw}", torch.nn.MaxPool2d(2), (_r(b, c, hw, hw),))
           for b, c, hw in shapes]
    out += [Case("pool", f"adaptive_avg_pool {b}x{c}x{hw}", torch.nn.AdaptiveAvgPool2d(1),
                 (_r(b, c, hw, hw),)) for b, c, hw in ((1, 64, 8), (8, 512, 7))[: 1 if quick else 2]]
    return out


@CASES.register("memory")
def _memory(quick: bool) -> list[Case]:
    ns = [64, 1 << 20] if quick else [64, 65536, 1 << 20, 1 << 22]
    out = [Case("memory", f"contiguous {n}", lambda x: x.t().contiguous(), (_r(n // 64, 64),)) for n in ns]
    if not quick:
        out += [Case("memory", f"cat {n}", lambda a, b: torch.cat([a, b]), (_r(n // 2), _r(n // 2)))
                for n in (4096, 1 << 20)]
        # zero padding of a feature map (TF-style 'same' padding in HF MobileNet/EfficientNet)
        out += [Case("memory", f"pad {b}x{c}x{hw}", lambda x: F.pad(x, (0, 1, 0, 1)), (_r(b, c, hw, hw),))
                for b, c, hw in ((1, 32, 56), (8, 96, 56), (1, 144, 28))]
    return out


@CASES.register("embedding")
def _embedding(quick: bool) -> list[Case]:
    rows = [1, 512] if quick else [1, 64, 1024]
    return [Case("embedding", f"embedding {r} of 30000x768", torch.nn.Embedding(30000, 768),
                 (torch.randint(0, 30000, (r,)),)) for r in rows]


def as_module(fn) -> torch.nn.Module:
    """The case's callable as a module (layers as they are, functions wrapped)."""
    return (fn if isinstance(fn, torch.nn.Module) else FnModule(fn)).eval()


def cases(quick: bool = False, categories: tuple[str, ...] | None = None) -> list[Case]:
    """All micro-benchmark cases (seeded: torch.manual_seed(0) first)."""
    torch.manual_seed(0)
    out: list[Case] = []
    for cat, make in CASES.items():
        if categories is None or cat in categories:
            out.extend(make(quick))
    return out
