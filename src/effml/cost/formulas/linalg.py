"""Matmul, convolution and attention: the ops that carry the MACs. FLOPs = 2 x MACs (+ bias adds).

Conventions (README "Counting conventions"):
- A (m x k) @ (k x n) product is m·n·k MACs = 2·m·n·k FLOPs. The bias of addmm/baddbmm/conv adds one FLOP
  per output element on top, so those ops report FLOPs = 2·MACs + outputs.
- Convolution counts the full kernel at every output position, zero padding included (a dense kernel
  multiplies those zeros too): MACs = N · C_out · prod(out spatial) · (C_in / groups) · prod(kernel).
- Attention counts the query-key pairs it computes: all L·S of them, or with is_causal exactly the
  unmasked pairs of PyTorch's top-left-aligned causal mask. Each pair costs E MACs for q·k and E_v MACs
  for p·v, plus per score 1 FLOP scale, 5 FLOPs softmax (max, subtract, exp, sum, divide), 1 for an
  explicit mask add, 2 for dropout. An explicit mask counts the pairs it lets through when its values are
  known (a sliding window W: row i sees min(i+1, W) keys), as a windowed kernel computes only those; a mask
  whose values are unknown (a large one on meta) counts all L·S pairs.
  GQA/MQA: the count follows the query heads (each query head attends over its shared K/V head).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from effml.cost.registry import OpCost, bind, formula, named_formula, nbytes, prod

aten = torch.ops.aten


def matmul_cost(macs: int, bias_adds: int = 0) -> OpCost:
    return OpCost(flops=2 * macs + bias_adds, macs=macs)


@formula(aten.mm, category="matmul")
def _mm(args, kwargs, out):
    a, b = args[0], args[1]  # (m, k) @ (k, n)
    return matmul_cost(a.shape[0] * a.shape[1] * b.shape[1])


@formula(aten.addmm, category="matmul")
def _addmm(args, kwargs, out):
    a, b = args[1], args[2]  # bias + (m, k) @ (k, n)
    m, n = a.shape[0], b.shape[1]
    return matmul_cost(m * a.shape[1] * n, bias_adds=m * n)


@formula(aten.bmm, category="matmul")
def _bmm(args, kwargs, out):
    a, b = args[0], args[1]  # (B, m, k) @ (B, k, n)
    return matmul_cost(a.shape[0] * a.shape[1] * a.shape[2] * b.shape[2])


@formula(aten.baddbmm, category="matmul")
def _baddbmm(args, kwargs, out):
    a, b = args[1], args[2]
    bmn = a.shape[0] * a.shape[1] * b.shape[2]
    return matmul_cost(bmn * a.shape[2], bias_adds=bmn)


@formula(aten.addbmm, category="matmul")
def _addbmm(args, kwargs, out):
    a, b = args[1], args[2]  # sum_b (m, k) @ (k, n), + input
    m, n = a.shape[1], b.shape[2]
    return matmul_cost(a.shape[0] * m * a.shape[2] * n, bias_adds=a.shape[0] * m * n)


@formula(aten.mv, aten.addmv, category="matmul")
def _mv(args, kwargs, out):
    mat = args[0] if args[0].dim() == 2 else args[1]  # mv(mat, vec) | addmv(self, mat, vec)
    extra = mat.shape[0] if args[0].dim() == 1 else 0
    return matmul_cost(mat.shape[0] * mat.shape[1], bias_adds=extra)


@formula(aten.dot, aten.vdot, category="matmul")
def _dot(args, kwargs, out):
    return matmul_cost(args[0].shape[0])


@formula(aten.matmul, category="matmul")
def _matmul(args, kwargs, out):
    k = args[0].shape[-1]  # broadcasting matmul; out holds the broadcast batch and m, n
    return matmul_cost(out.numel() * k)


@formula(aten.linear, category="matmul")
def _linear(args, kwargs, out):
    w = args[1]  # (..., in) @ (out, in)^T
    bias = args[2] if len(args) > 2 else kwargs.get("bias")
    return matmul_cost(out.numel() * w.shape[-1], bias_adds=out.numel() if bias is not None else 0)


@formula(aten._int_mm, aten._scaled_mm, category="matmul")
def _int_mm(args, kwargs, out):
    a, b = args[0], args[1]
    return matmul_cost(a.shape[0] * a.shape[1] * b.shape[1])


# ---- grouped matmul (mixture-of-experts experts) -----------------------------------------------------
def grouped_mm_shape(a: torch.Tensor, b: torch.Tensor, offs) -> tuple[int, ...]:
    """Output shape of torch._grouped_mm: 2D x 2D groups K (out (G, m, n)); 2D x 3D groups the rows of a
    (out (M, n)); 3D x 2D groups the columns of b (out (m, N)); 3D x 3D is a batched mm (out (G, m, n))."""
    if a.dim() == 2 and b.dim() == 2:
        return (offs.shape[0], a.shape[0], b.shape[1])
    if a.dim() == 2:
        return (a.shape[0], b.shape[-1])
    if b.dim() == 2:
        return (a.shape[1], b.shape[1])
    return (a.shape[0], a.shape[1], b.shape[2])


@formula(aten._grouped_mm, category="matmul")
def _grouped_mm(args, kwargs, out):
    # every routed row meets its own expert's (k x n) matrix once: MACs = output elements x k, whatever the
    # split between experts (the offsets), e.g. Mixtral's up projection: (tokens x top_k) x d x 2·ffn.
    # 2D x 2D (the expert weights' gradient) contracts the grouped K: m x n x K_total.
    a, b = args[0], args[1]
    if a.dim() == 2 and b.dim() == 2:
        return matmul_cost(a.shape[0] * a.shape[1] * b.shape[1])
    cost = matmul_cost(out.numel() * a.shape[-1])
    if a.dim() == 2 and b.dim() == 3:  # routed rows x stacked experts: only the experts that got rows are read
        offs = bind(aten._grouped_mm.default, args, kwargs)["offs"]
        read = nbytes(a) + nbytes(offs) + experts_hit(offs, a.shape[0], b.shape[0]) * nbytes(b) // b.shape[0]
        cost = OpCost(cost.flops, cost.macs, bytes_read=read)
    return cost


def experts_hit(offs: torch.Tensor, rows: int, groups: int) -> int:
    """Experts with at least one routed row: counted from the offsets where they have values, else (meta)
    min(groups, rows) — exact for a decode step (top-2 of 8: 2 experts' weights read, not 8)."""
    if offs.device.type != "meta" and type(offs).__name__ != "FakeTensor":
        bounds = [0, *offs.tolist()]
        return sum(hi > lo for lo, hi in zip(bounds, bounds[1:]))
    return min(groups, rows)


@named_formula("transformers.grouped_mm_fallback", category="matmul")
def _grouped_mm_fallback(args, kwargs, out):
    # transformers' loop of one mm per expert (CPU torch <= 2.10, torch.compile): input (M, k), weight (G, k, n)
    x, w = args[0], args[1]
    return matmul_cost(x.shape[0] * w.shape[1] * w.shape[2])


@named_formula("transformers.grouped_mm_fallback_backward", category="matmul")
def _grouped_mm_fallback_backward(args, kwargs, out):
    x, w = args[0], args[1]  # grad input (M x n @ n x k) + grad weight (k x M @ M x n per expert): 2 x forward
    return matmul_cost(2 * x.shape[0] * w.shape[1] * w.shape[2])


def shape_only_grouped_mm(func, args, kwargs) -> bool:
    """torch._grouped_mm's meta kernel (which fake tensors use too) accepts only bf16, the CUDA kernel's limit;
    the CPU kernel runs fp32. True for the calls that then need their output made from shapes alone."""
    return (func is aten._grouped_mm.default and args[0].dtype != torch.bfloat16
            and (args[0].device.type == "meta" or type(args[0]).__name__ == "FakeTensor"))


def grouped_mm_output(args, kwargs, device) -> torch.Tensor:
    """An empty output of torch._grouped_mm's shape and dtype (for meta and fake-tensor runs)."""
    b = bind(aten._grouped_mm.default, args, kwargs)
    a, w = b["self"], b["mat2"]
    dtype = b.get("out_dtype") or a.dtype
    return torch.empty(grouped_mm_shape(a, w, b["offs"]), dtype=dtype, device=device)


# ---- convolution -----------------------------------------------------------------------------------
def conv_macs(x_shape, w_shape, out_shape, transposed: bool, groups: int) -> int:
    """MACs of one convolution from its input, weight and output shapes (any spatial rank)."""
    if transposed:  # weight (C_in, C_out/groups, *k): every input position scatters a full kernel
        batch, c_in, in_spatial = x_shape[0], x_shape[1], x_shape[2:]
        return batch * c_in * prod(in_spatial) * w_shape[1] * prod(w_shape[2:])
    batch, c_out, out_spatial = out_shape[0], out_shape[1], out_shape[2:]
    return batch * c_out * prod(out_spatial) * w_shape[1] * prod(w_shape[2:])  # w_shape[1] = C_in/groups


@formula(aten.convolution, aten._convolution, category="conv")
def _convolution(args, kwargs, out):
    b = bind_conv(args, kwargs)
    macs = conv_macs(b["input"].shape, b["weight"].shape, out.shape, bool(b["transposed"]), b["groups"])
    return matmul_cost(macs, bias_adds=out.numel() if b["bias"] is not None else 0)


def bind_conv(args, kwargs) -> dict:
    names = ("input", "weight", "bias", "stride", "padding", "dilation", "transposed", "output_padding", "groups")
    b = dict(zip(names, args))
    b.update({k: v for k, v in kwargs.items() if k in names})
    return b


@formula(aten.convolution_backward, category="conv")
def _convolution_backward(args, kwargs, out):
    (grad_out, x, w, bias_sizes, _stride, _pad, _dil, transposed, _opad, groups, mask) = args[:11]
    macs_fwd = conv_macs(x.shape, w.shape, grad_out.shape, bool(transposed), groups)
    macs = macs_fwd * (int(bool(mask[0])) + int(bool(mask[1])))  # grad_input and grad_weight each = fwd
    return matmul_cost(macs, bias_adds=grad_out.numel() if mask[2] else 0)


# ---- attention -------------------------------------------------------------------------------------
SCALE_FLOPS, SOFTMAX_FLOPS, MASK_FLOPS, DROPOUT_FLOPS = 1, 5, 1, 2
SOFTMAX_BACKWARD_FLOPS = 4  # dS = P * (dP - rowsum(dP * P)): mul, sum, sub, mul


def causal_pairs(L: int, S: int) -> int:
    """Unmasked (query, key) pairs of PyTorch's is_causal mask, tril(ones(L, S)): row i sees min(i+1, S) keys."""
    if L <= S:
        return L * (L + 1) // 2
    return S * (S + 1) // 2 + (L - S) * S


@dataclass(frozen=True)
class AttentionShape:
    heads: int  # product of the query's leading dims (batch x query heads)
    kv_heads: int  # product of the key's leading dims (batch x kv heads)
    L: int
    S: int
    E: int
    Ev: int
    pairs: int  # (query, key) pairs computed per head
    kept: int | None = None  # pairs an explicit mask lets through, summed over all heads (None: unknown)

    @classmethod
    def of(cls, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool,
           kept: int | None = None) -> "AttentionShape":
        L, E, S, Ev = q.shape[-2], q.shape[-1], k.shape[-2], v.shape[-1]
        pairs = causal_pairs(L, S) if causal else L * S
        return cls(prod(q.shape[:-2]), prod(k.shape[:-2]), L, S, E, Ev, pairs, kept)

    @property
    def scores(self) -> int:
        """(query, key) scores computed, all heads together."""
        return self.heads * self.pairs if self.kept is None else self.kept

    def forward(self, masked: bool, dropout: bool) -> OpCost:
        scores = self.scores
        per_score = SCALE_FLOPS + SOFTMAX_FLOPS + MASK_FLOPS * masked + DROPOUT_FLOPS * dropout
        return matmul_cost(scores * (self.E + self.Ev), bias_adds=scores * per_score)

    def backward(self, dropout: bool) -> OpCost:
        """dV = P^T dO, dP = dO V^T, dQ = dS K, dK = dS^T Q: twice the forward MACs (no recompute counted)."""
        scores = self.scores
        per_score = SOFTMAX_BACKWARD_FLOPS + SCALE_FLOPS + DROPOUT_FLOPS * dropout
        gqa_reduce = (self.heads - self.kv_heads) * self.S * (self.E + self.Ev)  # sum dK, dV over shared heads
        return matmul_cost(2 * scores * (self.E + self.Ev), bias_adds=scores * per_score + gqa_reduce)


# The fused SDPA kernels the dispatcher can pick, when seen directly at the aten level (query/key/value
# in (B, H, L, E) layout). Calls made through F.scaled_dot_product_attention are counted one level up,
# before the dispatcher picks a backend, by the counter's function mode; these entries cover direct calls.
_FUSED_FORWARD = [aten._scaled_dot_product_flash_attention_for_cpu, aten._scaled_dot_product_flash_attention,
                  aten._scaled_dot_product_efficient_attention, aten._scaled_dot_product_cudnn_attention,
                  aten._scaled_dot_product_fused_attention_overrideable]
_FUSED_BACKWARD = [aten._scaled_dot_product_flash_attention_for_cpu_backward,
                   aten._scaled_dot_product_flash_attention_backward,
                   aten._scaled_dot_product_efficient_attention_backward,
                   aten._scaled_dot_product_cudnn_attention_backward,
                   aten._scaled_dot_product_fused_attention_overrideable_backward]


def _fused_args(func, args, kwargs):
    b = bind(func, args, kwargs)
    mask = b.get("attn_mask", b.get("attn_bias"))
    shape = AttentionShape.of(b["query"], b["key"], b["value"], bool(b.get("is_causal")))
    return shape, mask is not None, bool(b.get("dropout_p"))


def _register_fused():
    for pkt in _FUSED_FORWARD:
        def fwd(args, kwargs, out, pkt=pkt):
            shape, masked, dropout = _fused_args(pkt.default, args, kwargs)
            return shape.forward(masked, dropout)
        formula(pkt, category="attention")(fwd)
    for pkt in _FUSED_BACKWARD:
        def bwd(args, kwargs, out, pkt=pkt):
            shape, _, dropout = _fused_args(pkt.default, args, kwargs)
            return shape.backward(dropout)
        formula(pkt, category="attention")(bwd)


_register_fused()
