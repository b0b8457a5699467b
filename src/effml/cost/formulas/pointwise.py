"""Elementwise ops, activations, normalisation, softmax, reductions, pooling, embedding and losses.

Convention: one FLOP per arithmetic operation or comparison per element; a transcendental (exp, log, tanh,
erf, sqrt, rsqrt) counts as one. Composite activations count their parts; the count and its derivation
sit next to each op below, written once. Pure selection (where, masked_fill) and copies are 0 FLOPs
(see memory.py). Reductions count one FLOP per input element (the accumulation).
"""

from __future__ import annotations

import math

import torch

from effml.cost.registry import (OpCost, bind, first_tensor, formula, nbytes, numel, out_numel,
                                 per_input_element, per_output_element, prod)

aten = torch.ops.aten

# ---- elementwise arithmetic and comparisons: 1 FLOP per output element ------------------------------
per_output_element({name: 1 for name in (
    "add", "sub", "rsub", "mul", "div", "neg", "reciprocal", "rsqrt", "sqrt", "exp", "exp2", "expm1", "log",
    "log2", "log10", "log1p", "abs", "sgn", "sign", "pow", "sin", "cos", "tan", "tanh", "erf", "erfinv", "atan",
    "atan2", "floor", "ceil", "round", "trunc", "frac", "fmod", "remainder", "floor_divide", "maximum",
    "minimum", "clamp_min", "clamp_max", "eq", "ne", "lt", "le", "gt", "ge", "logical_not", "logical_and",
    "logical_or", "logical_xor", "bitwise_not", "bitwise_and", "bitwise_or", "bitwise_xor", "isnan",
    "isinf", "nan_to_num", "square", "cumsum", "copysign", "threshold",
)}, category="elementwise")
per_output_element({
    "clamp": 2,  # max(min(x, hi), lo)
    "lerp": 3,  # a + w * (b - a)
    "addcmul": 3,  # a + v * b * c
    "addcdiv": 3,  # a + v * b / c
}, category="elementwise")

# ---- activations ------------------------------------------------------------------------------------
per_output_element({
    "relu": 1,  # max(x, 0)
    "relu6": 2,  # min(max(x, 0), 6)
    "hardtanh": 2,  # min(max(x, lo), hi)
    "leaky_relu": 2,  # x > 0 ? x : a * x  (compare, mul)
    "sigmoid": 4,  # 1 / (1 + exp(-x)): neg, exp, add, div
    "silu": 5,  # x * sigmoid(x)
    "hardsigmoid": 4,  # min(max(x + 3, 0), 6) / 6
    "hardswish": 5,  # x * hardsigmoid(x)
    "softplus": 3,  # log(1 + exp(x))
    "elu": 4,  # x > 0 ? x : a * (exp(x) - 1)
    "mish": 5,  # x * tanh(softplus(x))
    # backward of activations, from the derivative written out
    "threshold_backward": 1,  # g where x > t
    "hardtanh_backward": 3,  # two compares and a select
    "leaky_relu_backward": 2,  # compare, mul
    "sigmoid_backward": 3,  # g * y * (1 - y)
    "tanh_backward": 3,  # g * (1 - y^2)
    "silu_backward": 9,  # sigmoid (4), then g * s * (1 + x * (1 - s)): 5
    "hardsigmoid_backward": 3,
    "hardswish_backward": 5,
    "elu_backward": 4,
}, category="activation")

GELU_ERF, GELU_TANH = 5, 9  # 0.5·x·(1 + erf(x/√2)); 0.5·x·(1 + tanh(√(2/π)(x + 0.044715·x³)))
GELU_BACKWARD_ERF, GELU_BACKWARD_TANH = 11, 16  # Φ(x) + x·φ(x), times g; tanh form: its derivative


@formula("gelu", category="activation")
def _gelu(args, kwargs, out):
    approx = kwargs.get("approximate", args[1] if len(args) > 1 else "none")
    return OpCost((GELU_TANH if approx == "tanh" else GELU_ERF) * out_numel(out))


@formula("gelu_backward", category="activation")
def _gelu_backward(args, kwargs, out):
    approx = kwargs.get("approximate", args[2] if len(args) > 2 else "none")
    return OpCost((GELU_BACKWARD_TANH if approx == "tanh" else GELU_BACKWARD_ERF) * out_numel(out))


# ---- softmax ----------------------------------------------------------------------------------------
per_output_element({
    "_softmax": 5,  # max, subtract, exp, sum, divide
    "_safe_softmax": 5,
    "_log_softmax": 5,  # max, subtract, exp, sum, subtract log-sum
    "_softmax_backward_data": 4,  # y * (g - sum(g * y)): mul, sum, sub, mul
    "_log_softmax_backward_data": 4,  # g - exp(y) * sum(g): exp, sum, mul, sub
}, category="softmax")

# ---- reductions: per input element ------------------------------------------------------------------
per_input_element({
    "sum": 1, "mean": 1, "amax": 1, "amin": 1, "max": 1, "min": 1, "prod": 1, "argmax": 1, "argmin": 1,
    "any": 1, "all": 1, "logsumexp": 4,  # max, subtract, exp, sum
    "var": 3, "std": 3, "var_mean": 3, "std_mean": 3,  # subtract mean, square, accumulate
    "norm": 2, "linalg_vector_norm": 2,  # square (or abs), accumulate
    "topk": 1, "histc": 1,  # MoE routing: one compare per score (top-k of few experts), one bucket per element
}, category="reduction")


@formula("sort", category="reduction")
def _sort(args, kwargs, out):
    # a comparison sort: n·ceil(log2 n) comparisons per row of n along `dim` (MoE routing sorts tokens by expert)
    x = first_tensor(args)
    # sort(self, dim=-1, descending=False); sort.stable(self, *, stable, dim=-1, descending=False)
    dim = args[1] if len(args) > 1 and type(args[1]) is int else kwargs.get("dim", -1)
    n = x.shape[dim] if x.dim() else 1
    return OpCost(x.numel() * max(1, math.ceil(math.log2(n))) if n > 1 else 0)

# ---- normalisation ----------------------------------------------------------------------------------
NORMALIZE = 5  # mean (1), centre (1), square + accumulate (2), scale by rstd (1)
AFFINE = 1  # per affine tensor present: gamma multiply, beta add
NORM_BACKWARD = 13  # recompute x̂ (2), g·γ (1), two row sums (3), dx (4), dγ (2), dβ (1)
RMS_NORMALIZE = 3  # square + accumulate (2), scale by rstd (1)
BN_EVAL = 2  # folded per channel: y = a·x + b


def _affine(*tensors) -> int:
    return AFFINE * sum(t is not None for t in tensors)


@formula("native_layer_norm", category="norm")
def _layer_norm(args, kwargs, out):
    b = bind(aten.native_layer_norm.default, args, kwargs)
    return OpCost((NORMALIZE + _affine(b["weight"], b["bias"])) * numel(b["input"]))


@formula("native_group_norm", category="norm")
def _group_norm(args, kwargs, out):
    b = bind(aten.native_group_norm.default, args, kwargs)
    return OpCost((NORMALIZE + _affine(b["weight"], b["bias"])) * numel(b["input"]))


@formula("_fused_rms_norm", category="norm")
def _rms_norm(args, kwargs, out):
    b = bind(aten._fused_rms_norm.default, args, kwargs)
    return OpCost((RMS_NORMALIZE + _affine(b["weight"])) * numel(b["input"]))


def _batch_norm(training: bool):
    def cost(args, kwargs, out):
        x, w, bias = args[0], args[1], args[2]
        if training:
            return OpCost((NORMALIZE + _affine(w, bias)) * numel(x))
        # inference writes y only; the saved-statistics outputs are placeholders (empty on CPU, (C,) on meta)
        return OpCost(BN_EVAL * numel(x), bytes_written=nbytes(first_tensor(out)))
    return cost


formula("native_batch_norm", category="norm")(
    lambda a, kw, out: _batch_norm(bool(bind(aten.native_batch_norm.default, a, kw)["training"]))(a, kw, out))
formula("_native_batch_norm_legit", category="norm")(
    lambda a, kw, out: _batch_norm(bool(_legit_training(a, kw)))(a, kw, out))
formula("_native_batch_norm_legit_no_training", category="norm")(_batch_norm(False))


def _legit_training(args, kwargs) -> bool:
    # two overloads: (input, w, b, running_mean, running_var, training, ...) and (input, w, b, training, ...)
    for a in args[3:]:
        if isinstance(a, bool):
            return a
    return bool(kwargs.get("training", False))


@formula("native_layer_norm_backward", "native_group_norm_backward", "_fused_rms_norm_backward",
         category="norm")
def _norm_backward(args, kwargs, out):
    return OpCost(NORM_BACKWARD * numel(args[0]))


@formula("native_batch_norm_backward", category="norm")
def _bn_backward(args, kwargs, out):
    b = bind(aten.native_batch_norm_backward.default, args, kwargs)
    return OpCost((NORM_BACKWARD if b["train"] else 5) * numel(b["grad_out"]))  # eval: g·a, plus dγ, dβ sums


# ---- pooling ----------------------------------------------------------------------------------------
def _window(kernel_size, nd: int) -> int:
    k = [kernel_size] * nd if isinstance(kernel_size, int) else list(kernel_size)
    return prod(k if len(k) == nd else k * nd)


for _nd, _names in ((1, ("max_pool1d", "avg_pool1d")),
                    (2, ("max_pool2d", "max_pool2d_with_indices", "avg_pool2d")),
                    (3, ("max_pool3d", "max_pool3d_with_indices", "avg_pool3d"))):
    # every output compares (max) or adds (avg) its k window elements; avg's divide replaces the first add
    formula(*_names, category="pool")(
        lambda a, kw, out, nd=_nd: OpCost(_window(a[1] if len(a) > 1 else kw["kernel_size"], nd) * out_numel(out)))


@formula("max_pool2d_with_indices_backward", "max_pool3d_with_indices_backward", category="pool")
def _max_pool_backward(args, kwargs, out):
    return OpCost(numel(args[0]))  # each output gradient is added into the one input it came from


@formula("avg_pool2d_backward", "avg_pool3d_backward", category="pool")
def _avg_pool_backward(args, kwargs, out):
    g, x = args[0], args[1]  # each output gradient is divided and spread over its k window elements
    return OpCost(_window(args[2], x.dim() - 2 if x.dim() in (4, 5) else x.dim() - 1) * numel(g))


def adaptive_window_sum(in_size: int, out_size: int) -> int:
    """Σ over outputs of the adaptive window length: window i spans [⌊i·In/Out⌋, ⌈(i+1)·In/Out⌉)."""
    return sum(math.ceil((i + 1) * in_size / out_size) - (i * in_size) // out_size for i in range(out_size))


@formula("_adaptive_avg_pool2d", "adaptive_avg_pool2d", "_adaptive_avg_pool3d", category="pool")
def _adaptive_avg(args, kwargs, out):
    x, out_t = args[0], first_tensor(out)
    nd = out_t.dim() - (x.dim() - len(args[1]))  # spatial rank
    spatial = [adaptive_window_sum(i, o) for i, o in zip(x.shape[-nd:], out_t.shape[-nd:])]
    return OpCost(prod(x.shape[:-nd]) * prod(spatial))


@formula("_adaptive_avg_pool2d_backward", "_adaptive_avg_pool3d_backward", category="pool")
def _adaptive_avg_backward(args, kwargs, out):
    g, x = args[0], args[1]
    nd = 2 if x.dim() in (3, 4) and g.dim() == x.dim() else 3
    spatial = [adaptive_window_sum(i, o) for i, o in zip(x.shape[-nd:], g.shape[-nd:])]
    return OpCost(prod(x.shape[:-nd]) * prod(spatial))


# ---- embedding, dropout, losses ---------------------------------------------------------------------
@formula("embedding", category="embedding")
def _embedding(args, kwargs, out):
    idx = args[1]  # (weight, indices): reads only the gathered rows
    return OpCost(0, 0, bytes_read=nbytes(idx) + nbytes(out), bytes_written=nbytes(out))


@formula("embedding_dense_backward", category="embedding")
def _embedding_backward(args, kwargs, out):
    return OpCost(numel(args[0]))  # scatter-add of every gradient element into its row


per_output_element({
    "native_dropout": 2,  # compare a uniform draw with p, scale the kept
    "native_dropout_backward": 2,  # g * mask * scale
    "mse_loss": 3,  # subtract, square, accumulate
    "mse_loss_backward": 3,  # 2 * (x - y) * g / n
}, category="loss")


@formula("nll_loss_forward", "nll_loss2d_forward", category="loss")
def _nll(args, kwargs, out):
    return OpCost(numel(args[1]))  # one gathered log-probability accumulated per target


@formula("nll_loss_backward", "nll_loss2d_backward", category="loss")
def _nll_backward(args, kwargs, out):
    return OpCost(numel(args[2]))  # one scatter per target
