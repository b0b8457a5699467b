"""GPTQ (Frantar et al., "GPTQ: Accurate Post-Training Quantization for Generative Pre-trained Transformers",
ICLR 2023): int4/int8 weights chosen column by column to minimise each layer's output error on calibration data.

For a layer y = W x with calibration inputs X (in, N), the objective is ||W X - Q X||_F^2 = tr(E H Eᵀ) / 2 with
E = W - Q and H = 2 X Xᵀ / N (the Hessian of the squared error). Columns are quantized in order; after column j
is rounded, the remaining columns absorb its error through the inverse Hessian (Optimal Brain Surgeon):
    W[:, j+1:] -= (w_j - q_j) / [H⁻¹]_jj · [H⁻¹]_{j, j+1:}
computed with the upper Cholesky factor of H⁻¹ (paper, Algorithm 1), in lazy batches of `block_size` columns
(updates inside a batch, one matrix product for the rest). H is damped by damp · mean(diag H) on its diagonal.
`act_order` quantizes columns by decreasing diag(H) (largest activations first); group scales are then taken
from the unmodified weights ("static groups"), so codes keep the plain per-group layout of `WeightOnlyLinear`.

The model is calibrated block by block (`effml.compress.blockwise`): each block's Hessians come from the
outputs of the already-quantized blocks before it; inside a block all layers use the block's input statistics
at once (not AutoGPTQ's "true sequential" order). Layers outside the block stack (embeddings, the LM head, tied
to the embedding in SmolLM2 and GPT-2) are left in float and listed in `skipped` with that reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, ClassVar

import torch
from torch import nn

from effml.compress.blockwise import (InputCollector, block_inputs, block_layers, find_blocks, next_input,
                                      run_block)
from effml.compress.configs import CONFIGS, CompressionConfig
from effml.compress.hf_layers import in_out, linear_weight, replace_module, weight_layers
from effml.errors import ConfigError


@dataclass(frozen=True)
class Grid:
    """bits=4: codes 0..15 over each group's [min, max] (w = (q - zero) * scale, zero fractional); bits=8: symmetric
    -127..127 per row. The same grids as `effml.compress.weight_only` (round to nearest)."""

    bits: int

    @property
    def symmetric(self) -> bool:
        return self.bits == 8

    def params(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """w (rows, cols) -> scale, zero, each (rows,): the grid of each row."""
        if self.symmetric:
            scale = (w.abs().amax(1) / 127).clamp(min=1e-12)
            return scale, torch.zeros_like(scale)
        lo, hi = w.amin(1), w.amax(1)  # the group's own range (llama.cpp Q4_1, effml's int4 RTN): 16 levels used
        scale = torch.where(hi > lo, (hi - lo) / 15, torch.ones_like(hi))
        return scale, -lo / scale  # a fractional zero point: the code of w = 0

    def codes(self, w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
        lo, hi = (-127, 127) if self.symmetric else (0, 15)
        return torch.clamp(torch.round(w / scale + zero), lo, hi)

    def dequant(self, q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
        return (q - zero) * scale


@dataclass
class Quantized:
    codes: torch.Tensor  # (out, in) integer-valued float
    scale: torch.Tensor  # (out, groups)
    zero: torch.Tensor  # (out, groups)
    weight: torch.Tensor  # (out, in): the dequantized weight (codes - zero) * scale
    group_size: int  # in_features when one group per row


def _group_params(w: torch.Tensor, grid: Grid, gs: int) -> tuple[torch.Tensor, torch.Tensor]:
    groups = w.shape[1] // gs
    sc, z = grid.params(w.reshape(-1, gs))  # (out*groups,)
    return sc.reshape(w.shape[0], groups), z.reshape(w.shape[0], groups)


def rtn(w: torch.Tensor, bits: int, group_size: int | None) -> Quantized:
    """Round to nearest on the same grid (the baseline GPTQ improves on)."""
    grid, gs = Grid(bits), group_size or w.shape[1]
    scale, zero = _group_params(w.float(), grid, gs)  # (out, groups)
    s, z = scale.repeat_interleave(gs, 1), zero.repeat_interleave(gs, 1)  # (out, in)
    q = grid.codes(w.float(), s, z)
    return Quantized(q, scale, zero, grid.dequant(q, s, z), gs)


@torch.no_grad()
def gptq(w: torch.Tensor, hessian: torch.Tensor, bits: int = 4, group_size: int | None = 128, damp: float = 0.01,
         act_order: bool = False, block_size: int = 128) -> Quantized:
    """GPTQ of one weight w (out, in) given H = 2 X Xᵀ / N (in, in)."""
    grid = Grid(bits)
    W = w.detach().clone().float()  # (out, in)
    n = W.shape[1]
    gs = group_size or n
    H = hessian.detach().clone().double()
    dead = torch.diag(H) == 0  # inputs never active: their weights cannot matter
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    static = _group_params(W, grid, gs) if act_order else None  # (out, groups) x 2, from the unmodified W
    perm = torch.argsort(torch.diag(H), descending=True) if act_order else torch.arange(n)
    W, H = W[:, perm], H[perm][:, perm]
    H += damp * torch.mean(torch.diag(H)) * torch.eye(n, dtype=H.dtype)
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True).float()  # (in, in)
    Q = torch.zeros_like(W)  # (out, in) codes, permuted order
    S, Z = torch.zeros_like(W), torch.zeros_like(W)  # per-column scale/zero, permuted order
    bs = max(block_size // gs, 1) * gs if gs < n else block_size  # a batch holds whole groups
    for i1 in range(0, n, bs):
        i2 = min(i1 + bs, n)
        W1, E1, Hi = W[:, i1:i2].clone(), torch.zeros_like(W[:, i1:i2]), Hinv[i1:i2, i1:i2]  # (out, b), (b, b)
        for i in range(i2 - i1):
            j = i1 + i
            if act_order:
                g = int(perm[j]) // gs
                sc, z = static[0][:, g], static[1][:, g]
            elif j % gs == 0:
                sc, z = grid.params(W1[:, i:i + gs]) if gs < n else grid.params(W)  # (out,); j = 0: W unmodified
            col = W1[:, i]  # (out,)
            q = grid.codes(col, sc, z)
            Q[:, j], S[:, j], Z[:, j] = q, sc, z
            err = (col - grid.dequant(q, sc, z)) / Hi[i, i]  # (out,)
            W1[:, i:] -= err[:, None] * Hi[i, i:][None, :]
            E1[:, i] = err
        W[:, i2:] -= E1 @ Hinv[i1:i2, i2:]
    inv = torch.argsort(perm)
    Q, S, Z = Q[:, inv], S[:, inv], Z[:, inv]  # back to the original column order
    scale, zero = S[:, ::gs].contiguous(), Z[:, ::gs].contiguous()  # (out, groups)
    return Quantized(Q, scale, zero, grid.dequant(Q, S, Z), gs)


def output_error(w: torch.Tensor, q: torch.Tensor, hessian: torch.Tensor) -> float:
    """tr((W - Q) H (W - Q)ᵀ) / 2 = ||W X - Q X||² / N: the layer objective GPTQ minimises."""
    e = (w - q).double()  # (out, in)
    return float(torch.einsum("oi,ij,oj->", e, hessian.double(), e) / 2)


# ---- the method -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GPTQConfig(CompressionConfig):
    """GPTQ weights (int4 per group, asymmetric; or int8 per row, symmetric) from calibration token ids."""

    name: ClassVar[str] = "gptq"
    bits: int = 4  # 4 | 8
    group_size: int | None = 128  # bits=4: 32 | 64 | 128 ...; None: one group per row
    damp: float = 0.01  # fraction of mean(diag H) added to diag H
    act_order: bool = False
    block_size: int = 128  # lazy-batch width (columns)
    batch_size: int = 1  # calibration rows per forward
    exclude: tuple[str, ...] = ()  # layer names (full, as in named_modules) left in float

    def __post_init__(self):
        if self.bits not in (4, 8) or isinstance(self.bits, bool):
            raise ConfigError(f"{type(self).__name__}.bits must be 4 or 8 (the weight-only kernels), got {self.bits!r}")
        if self.bits == 8 and self.group_size is not None:
            raise ConfigError(f"{type(self).__name__}.group_size applies to bits=4; int8 is per output row "
                              "(group_size=None)")
        gs = self.group_size
        if gs is not None and (isinstance(gs, bool) or not isinstance(gs, int) or gs < 1):
            raise ConfigError(f"{type(self).__name__}.group_size must be a positive integer or None, got {gs!r}")
        d = self.damp
        if isinstance(d, bool) or not isinstance(d, (int, float)) or not 0 <= d < 1:
            raise ConfigError(f"{type(self).__name__}.damp must be in [0, 1), got {d!r}")
        self._positive_ints("block_size", "batch_size")
        self._names("exclude")


if "gptq" not in CONFIGS:
    CONFIGS.add("gptq", GPTQConfig)


@dataclass
class CalibratedQuant:
    model: nn.Module = field(repr=False)
    layers: list[str]
    skipped: list[tuple[str, str]]
    errors: dict[str, float]  # layer -> output error tr(E H Eᵀ)/2 after quantization (per calibration token)
    notes: list[str] = field(default_factory=list)
    alphas: dict[str, float] = field(default_factory=dict)  # AWQ: the scale exponent chosen per layer


def check_groups(model: nn.Module, names: list[str], group_size: int | None) -> None:
    """Every quantized layer's in_features must be a multiple of group_size: refuse naming the first that is not."""
    if group_size is None:
        return
    for n in names:
        inp, _ = in_out(model.get_submodule(n))
        if inp % group_size:
            raise ConfigError(f"layer {n}: in_features {inp} is not a multiple of group_size={group_size}; "
                              f"pick a group size dividing {inp} or exclude the layer")


def to_weight_only(m: nn.Module, qz: Quantized, bits: int, name: str) -> nn.Module:
    """A WeightOnlyLinear holding exactly these codes (same forward interface as the Linear/Conv1D it replaces)."""
    from effml.compress.weight_only import WeightOnlyLinear

    bias = None if m.bias is None else m.bias.detach().clone()
    dt = torch.int8 if bits == 8 else torch.uint8
    return WeightOnlyLinear.from_codes(qz.codes.to(dt), qz.scale, qz.zero, bits, qz.group_size if bits == 4 else 128,
                                       bias, name=name)


def calibrated_quantize(model: nn.Module, calibration: torch.Tensor, bits: int, group_size: int | None,
                        exclude: tuple[str, ...], batch_size: int,
                        quantize_block: Callable, progress=None) -> CalibratedQuant:
    """The block loop shared by GPTQ and AWQ: `quantize_block(block, prefix, layers, inputs) -> {name: Quantized}`
    changes a block given its inputs; the quantized layers are swapped in before the next block's inputs are made."""
    if calibration is None:
        raise ConfigError("GPTQ/AWQ need calibration token ids: quantize(model, cfg, calibration=tokens) with "
                          "tokens (samples, seq) from effml.eval.calibration_tokens(tokenizer)")
    prefix, blocks = find_blocks(model)
    unknown = [e for e in exclude if e not in dict(model.named_modules())]
    if unknown:
        raise ConfigError(f"exclude names {unknown[0]!r}, not a module of the model")
    chosen = {}
    for i, blk in enumerate(blocks):
        bp = f"{prefix}.{i}"
        chosen[i] = {n: m for n, m in block_layers(blk).items() if f"{bp}.{n}" not in exclude}
    check_groups(model, [f"{prefix}.{i}.{n}" for i, d in chosen.items() for n in d], group_size)
    inputs = block_inputs(model, blocks, calibration, batch_size)
    done, errors = [], {}
    for i, blk in enumerate(blocks):
        bp = f"{prefix}.{i}"
        out = quantize_block(blk, bp, chosen[i], inputs)
        for n, (qz, err) in out.items():
            replace_module(blk, n, to_weight_only(blk.get_submodule(n), qz, bits, f"{bp}.{n}"))
            done.append(f"{bp}.{n}")
            errors[f"{bp}.{n}"] = err
        with torch.no_grad():
            inputs = [next_input(inp, run_block(blk, inp)) for inp in inputs]
        if progress is not None:
            progress(i + 1, len(blocks))
    in_blocks = {f"{prefix}.{i}.{n}" for i, blk in enumerate(blocks) for n in block_layers(blk)}
    skipped = [(n, "excluded by the config") for n in exclude if n in in_blocks]
    for n in weight_layers(model):
        if n not in in_blocks:
            tied = any(p is q for p in model.get_submodule(n).parameters(recurse=False)
                       for m in model.modules() if isinstance(m, nn.Embedding) for q in m.parameters())
            skipped.append((n, "LM head tied to the input embedding: kept in float with it" if tied else
                            "outside the transformer blocks (embedding / head): kept in float"))
    return CalibratedQuant(model, done, skipped, errors)


def gptq_model(model: nn.Module, config: GPTQConfig, calibration: torch.Tensor, progress=None) -> CalibratedQuant:
    """GPTQ every Linear/Conv1D of every block, in place."""

    def quantize_block(blk, bp, layers, inputs):
        H = {n: torch.zeros(in_out(m)[0], in_out(m)[0], dtype=torch.float64) for n, m in layers.items()}
        count = dict.fromkeys(layers, 0)

        def add(n, x):  # x: (N, in)
            H[n] += x.double().T @ x.double()
            count[n] += x.shape[0]

        col = InputCollector(layers, add)
        try:
            with torch.no_grad():
                for inp in inputs:
                    run_block(blk, inp)
        finally:
            col.remove()
        out = {}
        for n, m in layers.items():
            h = 2 * H[n] / max(count[n], 1)  # (in, in)
            w = linear_weight(m).detach().float()
            qz = gptq(w, h, config.bits, config.group_size, config.damp, config.act_order, config.block_size)
            out[n] = (qz, output_error(w, qz.weight, h))
        return out

    return calibrated_quantize(model, calibration, config.bits, config.group_size, config.exclude,
                               config.batch_size, quantize_block, progress)


def quant_result(method: str, model: nn.Module, res: CalibratedQuant, dense: int, bits: int, notes: list[str]):
    """The QuantResult of a calibrated method: WeightOnlyLinear codes + scales, every other tensor at fp32."""
    import math

    from effml.compress.quantize import QuantResult
    from effml.compress.weight_only import WeightOnlyLinear

    wol = [m for m in model.modules() if isinstance(m, WeightOnlyLinear)]
    other = sum({id(p): p.numel() for p in model.parameters()}.values()) * 32
    stored = math.ceil((other + sum(m.storage_bits() for m in wol)) / 8)
    params = sum(m.codes.numel() for m in wol) + other // 32
    return QuantResult(method, model, res.layers, params, dense, stored, bits, notes + res.notes, None, res.skipped)


def _register():
    from effml.compress.layers import param_bytes
    from effml.compress.quantize import QUANTIZERS

    @QUANTIZERS.register(GPTQConfig)
    def gptq_method(model: nn.Module, config: GPTQConfig, *, calibration=None, progress=None, **_):
        dense = param_bytes(model)
        cb = None if progress is None else (lambda i, n: progress(f"gptq: block {i}/{n}", i / n))
        res = gptq_model(model, config, calibration, cb)
        g = f"groups of {config.group_size}" if config.group_size else "one group per row"
        note = (f"GPTQ int{config.bits} ({g}, damp {config.damp}, act_order={config.act_order}) on "
                f"{calibration.shape[0]}x{calibration.shape[1]} calibration tokens, block by block")
        return quant_result(f"gptq-int{config.bits}", model, res, dense, config.bits, [note])


_register()
