"""AWQ (Lin et al., "AWQ: Activation-aware Weight Quantization for LLM Compression and Acceleration", MLSys 2024):
int4 weights with per-input-channel scales that protect the channels carrying large activations.

For layers sharing an input x (q/k/v after the attention norm, gate/up after the MLP norm, down after up):
    y = W x = (W diag(s)) (diag(s)⁻¹ x),   s = s_x^α / sqrt(max(s_x^α) · min(s_x^α)),  s_x = mean |x| per channel
α is searched on a grid of `grid` points in [0, 1) to minimise || Q(W diag(s)) diag(s)⁻¹ X - W X ||² on calibration
inputs (paper, eq. 5; the grid and normalisation of the authors' code). diag(s)⁻¹ is folded into the operation that
produces x: an RMSNorm/LayerNorm's weight (and bias), or the rows of the previous Linear (v -> o when their widths
match; up -> down, since down's input is silu(gate) * up). Then each layer's per-group weight range is clipped by
the ratio (1.0 down to 0.5) that minimises that group's output error (the paper's weight-clipping search; like
the authors' code, not for q/k, whose errors the softmax amplifies).

Which ops feed which layers is read from the module structure of the block (rules below, in `SCALE_RULES`); a
layer no rule covers (o under grouped-query attention, GPT-2's c_proj after GELU) keeps s = 1 (clipping only) and
is named in the result's notes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from effml.compress.blockwise import InputCollector, run_block
from effml.compress.configs import CONFIGS, CompressionConfig
from effml.compress.gptq import Quantized, calibrated_quantize, output_error, rtn
from effml.compress.hf_layers import in_out, linear_weight
from effml.errors import ConfigError
from effml.registries import Registry


@dataclass(frozen=True)
class AWQConfig(CompressionConfig):
    """AWQ int4 per group (asymmetric) from calibration token ids."""

    name: ClassVar[str] = "awq"
    bits: int = 4  # 4 only (AWQ is a 4-bit method)
    group_size: int = 128  # 32 | 64 | 128 ...
    grid: int = 20  # alpha in {0, 1/grid, ..., (grid-1)/grid}
    clip: bool = True
    search_tokens: int = 2048  # calibration tokens per block used by the scale search (random subset)
    clip_tokens: int = 512  # ... and by the clipping search
    batch_size: int = 1  # calibration rows per forward
    exclude: tuple[str, ...] = ()  # layer names (full, as in named_modules) left in float

    def __post_init__(self):
        if self.bits != 4 or isinstance(self.bits, bool):
            raise ConfigError(f"AWQConfig.bits must be 4, got {self.bits!r}")
        if not isinstance(self.clip, bool):
            raise ConfigError(f"AWQConfig.clip must be True or False, got {self.clip!r}")
        self._positive_ints("group_size", "grid", "search_tokens", "clip_tokens", "batch_size")
        self._names("exclude")


if "awq" not in CONFIGS:
    CONFIGS.add("awq", AWQConfig)


@dataclass
class ScaleGroup:
    prev: str  # the op producing the shared input (inside the block)
    layers: list[str]  # the layers consuming it


SCALE_RULES: Registry = Registry("AWQ scaling rule")


def _has(block: nn.Module, *names: str) -> bool:
    try:
        return all(block.get_submodule(n) is not None for n in names)
    except AttributeError:
        return False


def _prev_linear(block, prev, layer) -> list[ScaleGroup]:
    """prev's rows can carry layer's scales only when prev's outputs are exactly layer's inputs."""
    widths_match = in_out(block.get_submodule(prev))[1] == in_out(block.get_submodule(layer))[0]
    return [ScaleGroup(prev, [layer])] if widths_match else []


@SCALE_RULES.register("effml-llama")
def _effml(block: nn.Module) -> list[ScaleGroup] | None:
    a, f = "attention", "feed_forward"
    if not _has(block, "attention_norm", f"{a}.wq", f"{a}.wk", f"{a}.wv", f"{a}.wo", "ffn_norm", f"{f}.w1", f"{f}.w3"):
        return None
    return [ScaleGroup("attention_norm", [f"{a}.wq", f"{a}.wk", f"{a}.wv"]), *_prev_linear(block, f"{a}.wv", f"{a}.wo"),
            ScaleGroup("ffn_norm", [f"{f}.w1", f"{f}.w3"]), ScaleGroup(f"{f}.w3", [f"{f}.w2"])]


@SCALE_RULES.register("hf-llama")
def _hf_llama(block: nn.Module) -> list[ScaleGroup] | None:
    a, m = "self_attn", "mlp"
    if not _has(block, "input_layernorm", f"{a}.q_proj", f"{a}.k_proj", f"{a}.v_proj", f"{a}.o_proj",
                "post_attention_layernorm", f"{m}.gate_proj", f"{m}.up_proj", f"{m}.down_proj"):
        return None
    return [ScaleGroup("input_layernorm", [f"{a}.q_proj", f"{a}.k_proj", f"{a}.v_proj"]),
            *_prev_linear(block, f"{a}.v_proj", f"{a}.o_proj"),
            ScaleGroup("post_attention_layernorm", [f"{m}.gate_proj", f"{m}.up_proj"]),
            ScaleGroup(f"{m}.up_proj", [f"{m}.down_proj"])]


@SCALE_RULES.register("hf-gpt2")
def _hf_gpt2(block: nn.Module) -> list[ScaleGroup] | None:
    if not _has(block, "ln_1", "attn.c_attn", "ln_2", "mlp.c_fc"):
        return None
    return [ScaleGroup("ln_1", ["attn.c_attn"]), ScaleGroup("ln_2", ["mlp.c_fc"])]


def scale_groups(block: nn.Module) -> list[ScaleGroup]:
    for name in SCALE_RULES:
        found = SCALE_RULES.get(name)(block)
        if found is not None:
            return found
    return []


@torch.no_grad()
def _fold(block: nn.Module, prev: str, s: torch.Tensor) -> None:
    """Divide what `prev` produces by s (C,): a norm's weight/bias or a Linear/Conv1D's output rows."""
    m = block.get_submodule(prev)
    if hasattr(m, "nf") or isinstance(m, nn.Linear):
        linear_weight(m).div_(s[:, None])
        if m.bias is not None:
            m.bias.div_(s)
        return
    m.weight.div_(s)
    if getattr(m, "bias", None) is not None:
        m.bias.div_(s)


def _rtn_error(X: torch.Tensor, W: torch.Tensor, s: torch.Tensor, gs: int, Y: torch.Tensor) -> float:
    q = rtn(W * s, 4, gs).weight / s  # (out, in)
    return float(((X @ q.T - Y) ** 2).mean())


def search_scale(X: torch.Tensor, W: torch.Tensor, gs: int, grid: int) -> tuple[torch.Tensor, float]:
    """Best s (in,) for layers W (out, in) on inputs X (N, in); returns (s, alpha)."""
    sx = X.abs().mean(0).clamp(min=1e-8)  # (in,)
    Y = X @ W.T  # (N, out)
    best = (float("inf"), torch.ones_like(sx), 0.0)
    for k in range(grid):
        alpha = k / grid
        s = sx.pow(alpha)
        s = (s / (s.max() * s.min()).sqrt()).clamp(min=1e-4)
        err = _rtn_error(X, W, s, gs, Y)
        if err < best[0]:
            best = (err, s, alpha)
    return best[1], best[2]


def search_clip(X: torch.Tensor, W: torch.Tensor, gs: int, steps: int = 10, shrink: float = 0.5) -> torch.Tensor:
    """The clipped weight: per (row, group), the max |w| ratio in {1, 1-0.05, ..., 0.55} of least output error."""
    out, n = W.shape
    G = n // gs
    Wg = W.reshape(out, G, gs)  # (out, G, gs)
    Xg = X.reshape(-1, G, gs)  # (N, G, gs)
    ref = torch.einsum("ngk,ogk->nog", Xg, Wg)  # (N, out, G): each group's contribution
    amax = Wg.abs().amax(-1, keepdim=True)  # (out, G, 1)
    best_err = torch.full((out, G), float("inf"))
    best = Wg.clone()
    for i in range(steps):
        mx = amax * (1 - shrink * i / steps)
        wc = torch.clamp(Wg, -mx, mx)  # (out, G, gs)
        q = rtn(wc.reshape(out, n), 4, gs).weight.reshape(out, G, gs)
        err = ((torch.einsum("ngk,ogk->nog", Xg, q) - ref) ** 2).mean(0)  # (out, G)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best = torch.where(better[..., None], wc, best)
    return best.reshape(out, n)


def _subset(X: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    if X.shape[0] <= k:
        return X
    return X[torch.randperm(X.shape[0], generator=torch.Generator().manual_seed(seed))[:k]]


def awq_model(model: nn.Module, config: AWQConfig, calibration: torch.Tensor, progress=None):
    """AWQ every Linear/Conv1D of every block, in place; returns effml.compress.gptq.CalibratedQuant (+ notes)."""
    notes: list[str] = []
    alphas: dict[str, float] = {}

    def quantize_block(blk, bp, layers, inputs):
        xs: dict[str, list[torch.Tensor]] = {n: [] for n in layers}
        col = InputCollector(layers, lambda n, x: xs[n].append(x.float()))
        try:
            with torch.no_grad():
                for inp in inputs:
                    run_block(blk, inp)
        finally:
            col.remove()
        X = {n: torch.cat(v) for n, v in xs.items()}  # (N, in) each
        gs = config.group_size
        scaled: set[str] = set()
        for g in scale_groups(blk):
            if not all(n in layers for n in g.layers):
                continue  # an excluded member: leave the group unscaled
            Xs = _subset(X[g.layers[0]], config.search_tokens, 0)
            W = torch.cat([linear_weight(layers[n]).detach().float() for n in g.layers])  # (sum out, in)
            s, alpha = search_scale(Xs, W, gs, config.grid)
            with torch.no_grad():
                for n in g.layers:
                    linear_weight(layers[n]).mul_(s[None, :])  # W diag(s)
                _fold(blk, g.prev, s)
            for n in g.layers:
                X[n] = X[n] / s
                scaled.add(n)
                alphas[f"{bp}.{n}"] = alpha
        unscaled = [n for n in layers if n not in scaled]
        if unscaled:
            notes.append(f"{bp}: no foldable op before {', '.join(unscaled)}: AWQ scale 1 (clipping only)")
        out = {}
        for n, m in layers.items():
            w = linear_weight(m).detach().float()
            leaf = n.rsplit(".", 1)[-1]
            if config.clip and leaf not in ("wq", "wk", "q_proj", "k_proj"):
                w_c = search_clip(_subset(X[n], config.clip_tokens, 1), w, gs)
            else:
                w_c = w
            qz: Quantized = rtn(w_c, 4, config.group_size)
            h = 2 * X[n].T @ X[n] / X[n].shape[0]
            out[n] = (qz, output_error(w, qz.weight, h))
        return out

    res = calibrated_quantize(model, calibration, 4, config.group_size, config.exclude, config.batch_size,
                              quantize_block, progress)
    res.notes = notes
    res.alphas = alphas
    return res


def _register():
    from effml.compress.gptq import quant_result
    from effml.compress.layers import param_bytes
    from effml.compress.quantize import QUANTIZERS

    @QUANTIZERS.register(AWQConfig)
    def awq_method(model: nn.Module, config: AWQConfig, *, calibration=None, progress=None, **_):
        dense = param_bytes(model)
        cb = None if progress is None else (lambda i, n: progress(f"awq: block {i}/{n}", i / n))
        res = awq_model(model, config, calibration, cb)
        note = (f"AWQ int4 (groups of {config.group_size}, alpha grid {config.grid}, clip={config.clip}) on "
                f"{calibration.shape[0]}x{calibration.shape[1]} calibration tokens, block by block")
        return quant_result("awq-int4", model, res, dense, 4, [note])


_register()
