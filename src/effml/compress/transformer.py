"""Channel groups of transformer blocks: whole attention heads and the MLP intermediate.

Transformers are not FX-traced (HF models do not trace cleanly); instead each rule recognises one block
layout by its modules and returns the groups. The residual stream (hidden size) is never pruned: its
LayerNorms normalise over it, so removing features would change every other feature's output.

- `hf-bert`: BertAttention (`self.query/key/value` + `output.dense`): head h = rows h*hd..(h+1)*hd-1 of
  q, k, v and the same columns of the output projection; `num_attention_heads`/`all_head_size` updated
  (the forward views heads with -1, so the smaller module runs as is). BertLayer MLP: `intermediate.dense`
  rows + `output.dense` columns.
- `effml-gpt`: the zoo GPT's fused `qkv` (segments q|k|v at offsets 0, C, 2C) + `proj`; the attention is
  replaced by `HeadPrunedAttention` (its forward splits by heads x head_dim, not by C). MLP: `mlp.0` rows +
  `mlp.2` columns.
- `llama-mlp`: `gate_proj`/`up_proj` rows + `down_proj` columns (HF Llama, Mistral, SmolLM2).
- `hf-llama-attn`: `q_proj`/`k_proj`/`v_proj`/`o_proj` with `head_dim` (HF Llama family). Multi-head: head h is
  rows h*hd.. of q, k, v and the same columns of o. Grouped-query (n_kv < n_heads): only query heads are pruned,
  the same number from every KV group (a `HeadGroup` with kv_heads set), k/v stay whole and
  `num_key_value_groups` becomes the kept queries per KV head; whole heads only, so RoPE's head_dim is intact.
- `effml-llama-attn` / `effml-llama-mlp`: effml.llm's `Attention` (wq/wk/wv/wo, same GQA handling, `n_heads`
  updated) and `FeedForward` (w1/w3 rows + w2 columns).
- `hf-gpt2`: GPT2Attention's fused Conv1D `c_attn` (q|k|v at 0, C, 2C along the Conv1D's output dim 1) +
  `c_proj` (input dim 0); `num_heads`/`split_size` updated. GPT2MLP: `c_fc` outputs + `c_proj` inputs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dataclasses import dataclass

from effml.errors import ConfigError
from effml.registries import Registry
from effml.compress.structured import Group, Member

RULES: Registry = Registry("transformer structure rule")


@dataclass
class HeadGroup(Group):
    """Attention heads; kv_heads > 0: grouped-query attention, query heads kv-group-major (heads g*rep..g*rep+rep-1
    share KV head g), pruned by the same count in every group."""

    kv_heads: int = 0


class HeadPrunedAttention(nn.Module):
    """Causal self-attention with n_head heads of head_dim each (n_head * head_dim may be < n_embd)."""

    def __init__(self, n_embd: int, n_head: int, head_dim: int, bias: bool = True, dropout: float = 0.0):
        super().__init__()
        self.n_head, self.head_dim, self.dropout = n_head, head_dim, dropout
        self.qkv = nn.Linear(n_embd, 3 * n_head * head_dim, bias=bias)
        self.proj = nn.Linear(n_head * head_dim, n_embd, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        inner = self.n_head * self.head_dim
        q, k, v = self.qkv(x).split(inner, dim=2)  # 3 x (B, T, H*hd)
        q, k, v = (t.view(B, T, self.n_head, self.head_dim).transpose(1, 2) for t in (q, k, v))  # (B, H, T, hd)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                           dropout_p=self.dropout if self.training else 0.0)  # (B, H, T, hd)
        return self.proj(y.transpose(1, 2).reshape(B, T, inner))  # (B, T, C)


def _linear_members(name: str, lin: nn.Linear, dim: int, role: str, block: int = 1,
                    segments: tuple[int, ...] = (0,)) -> list[Member]:
    mems = [Member(name, "weight", dim, role, block, segments)]
    if lin.bias is not None and dim == 0:
        mems.append(Member(name, "bias", 0, role, block, segments))
    return mems


def _join(prefix: str, attr: str) -> str:
    return f"{prefix}.{attr}" if prefix else attr


@RULES.register("hf-bert")
def bert_groups(model: nn.Module) -> list[Group]:
    groups = []
    for name, m in model.named_modules():
        sa, out, inter = getattr(m, "self", None), getattr(m, "output", None), getattr(m, "intermediate", None)
        out_dense = getattr(out, "dense", None)
        qkv_linear = isinstance(sa, nn.Module) and all(isinstance(getattr(sa, k, None), nn.Linear)
                                                       for k in ("query", "key", "value"))
        if (qkv_linear
                and hasattr(sa, "num_attention_heads") and isinstance(out_dense, nn.Linear)):
            hd, heads = sa.attention_head_size, sa.num_attention_heads
            mems = []
            for k in ("query", "key", "value"):
                mems += _linear_members(_join(name, f"self.{k}"), getattr(sa, k), 0, "out", hd)
            mems += _linear_members(_join(name, "output.dense"), out_dense, 1, "in", hd)

            def fix(model, keep, sa=sa, hd=hd):
                sa.num_attention_heads = len(keep)
                sa.all_head_size = len(keep) * hd

            groups.append(Group(name, "heads", heads, mems, [fix]))
        inter_dense = getattr(inter, "dense", None)
        if isinstance(inter_dense, nn.Linear) and isinstance(out_dense, nn.Linear):
            mems = _linear_members(_join(name, "intermediate.dense"), inter_dense, 0, "out")
            mems += _linear_members(_join(name, "output.dense"), out_dense, 1, "in")
            groups.append(Group(_join(name, "intermediate"), "mlp", inter_dense.out_features, mems))
    return groups


@RULES.register("effml-gpt")
def gpt_groups(model: nn.Module) -> list[Group]:
    from effml.zoo.gpt import CausalSelfAttention

    groups = []
    for name, m in model.named_modules():
        if isinstance(m, (CausalSelfAttention, HeadPrunedAttention)):
            heads = m.n_head
            hd = m.head_dim if isinstance(m, HeadPrunedAttention) else m.qkv.in_features // heads
            inner = heads * hd
            mems = _linear_members(_join(name, "qkv"), m.qkv, 0, "out", hd, (0, inner, 2 * inner))
            mems += _linear_members(_join(name, "proj"), m.proj, 1, "in", hd)

            def fix(model, keep, name=name, hd=hd):
                old = model.get_submodule(name)
                new = HeadPrunedAttention(old.qkv.in_features, len(keep), hd, old.qkv.bias is not None, old.dropout)
                new.qkv, new.proj = old.qkv, old.proj
                parent, _, attr = name.rpartition(".")
                setattr(model.get_submodule(parent) if parent else model, attr, new)

            groups.append(Group(name, "heads", heads, mems, [fix]))
        mlp = getattr(m, "mlp", None)
        if (isinstance(mlp, nn.Sequential) and len(mlp) == 3 and isinstance(mlp[0], nn.Linear)
                and isinstance(mlp[2], nn.Linear)):
            mems = _linear_members(_join(name, "mlp.0"), mlp[0], 0, "out")
            mems += _linear_members(_join(name, "mlp.2"), mlp[2], 1, "in")
            groups.append(Group(_join(name, "mlp"), "mlp", mlp[0].out_features, mems))
    return groups


@RULES.register("llama-mlp")
def llama_mlp_groups(model: nn.Module) -> list[Group]:
    groups = []
    for name, m in model.named_modules():
        parts = [getattr(m, k, None) for k in ("gate_proj", "up_proj", "down_proj")]
        if all(isinstance(p, nn.Linear) for p in parts):
            mems = _linear_members(_join(name, "gate_proj"), parts[0], 0, "out")
            mems += _linear_members(_join(name, "up_proj"), parts[1], 0, "out")
            mems += _linear_members(_join(name, "down_proj"), parts[2], 1, "in")
            groups.append(Group(name, "mlp", parts[0].out_features, mems))
    return groups


def transformer_groups(model: nn.Module) -> list[Group]:
    """Groups found by every rule (empty when the model has no transformer block we know)."""
    return [g for rule in RULES.names() for g in RULES.get(rule)(model)]


def _conv1d_members(name: str, m: nn.Module, dim: int, role: str, block: int = 1,
                    segments: tuple[int, ...] = (0,)) -> list[Member]:
    """transformers Conv1D: weight (in, out): outputs are dim 1 (`dim`=0 means outputs, as for nn.Linear)."""
    mems = [Member(name, "weight", 1 if dim == 0 else 0, role, block, segments)]
    if m.bias is not None and dim == 0:
        mems.append(Member(name, "bias", 0, role, block, segments))
    return mems


def check_gqa_keep(name: str, keep: torch.Tensor, heads: int, kv: int) -> None:
    """Grouped-query attention stays valid only if every KV group keeps the same number of its query heads."""
    if kv >= heads:
        return
    per = torch.bincount(keep // (heads // kv), minlength=kv)  # (kv,) kept query heads per KV group
    if not bool((per == per[0]).all()):
        raise ConfigError(f"{name}: grouped-query attention needs the same number of query heads kept in each of its "
                          f"{kv} KV groups, got {per.tolist()}; prune heads with HeadPrune (it keeps them balanced)")


def _gqa_members(name, parts, heads, kv, hd):
    """Members of one attention's head group: q (+ k, v when heads == kv) rows and o columns."""
    q, k, v, o = parts
    mems = _linear_members(_join(name, q[0]), q[1], 0, "out", hd)
    if kv == heads:
        mems += _linear_members(_join(name, k[0]), k[1], 0, "out", hd)
        mems += _linear_members(_join(name, v[0]), v[1], 0, "out", hd)
    mems += _linear_members(_join(name, o[0]), o[1], 1, "in", hd)
    return mems


@RULES.register("hf-llama-attn")
def llama_attn_groups(model: nn.Module) -> list[Group]:
    groups = []
    for name, m in model.named_modules():
        names = ("q_proj", "k_proj", "v_proj", "o_proj")
        parts = [(k, getattr(m, k, None)) for k in names]
        if not (all(isinstance(p, nn.Linear) for _, p in parts) and isinstance(getattr(m, "head_dim", None), int)):
            continue
        hd = m.head_dim
        heads, kv = parts[0][1].out_features // hd, parts[1][1].out_features // hd

        def fix(model, keep, m=m, kv=kv, heads=heads, name=name):
            check_gqa_keep(name, keep, heads, kv)
            m.num_key_value_groups = len(keep) // kv

        groups.append(HeadGroup(name, "heads", heads, _gqa_members(name, parts, heads, kv, hd), [fix],
                                kv if kv < heads else 0))
    return groups


@RULES.register("effml-llama-attn")
def effml_attn_groups(model: nn.Module) -> list[Group]:
    from effml.llm.model import Attention

    groups = []
    for name, m in model.named_modules():
        if not isinstance(m, Attention):
            continue
        parts = [(k, getattr(m, k)) for k in ("wq", "wk", "wv", "wo")]
        heads, kv, hd = m.n_heads, m.n_kv, m.hd

        def fix(model, keep, m=m, kv=kv, heads=heads, name=name):
            check_gqa_keep(name, keep, heads, kv)
            m.n_heads = len(keep)

        groups.append(HeadGroup(name, "heads", heads, _gqa_members(name, parts, heads, kv, hd), [fix],
                                kv if kv < heads else 0))
    return groups


@RULES.register("effml-llama-mlp")
def effml_mlp_groups(model: nn.Module) -> list[Group]:
    from effml.llm.model import FeedForward

    groups = []
    for name, m in model.named_modules():
        if isinstance(m, FeedForward):
            mems = _linear_members(_join(name, "w1"), m.w1, 0, "out")
            mems += _linear_members(_join(name, "w3"), m.w3, 0, "out")
            mems += _linear_members(_join(name, "w2"), m.w2, 1, "in")
            groups.append(Group(name, "mlp", m.w1.out_features, mems))
    return groups


@RULES.register("hf-gpt2")
def gpt2_groups(model: nn.Module) -> list[Group]:
    from effml.compress.hf_layers import is_conv1d

    groups = []
    for name, m in model.named_modules():
        c_attn, c_proj, c_fc = getattr(m, "c_attn", None), getattr(m, "c_proj", None), getattr(m, "c_fc", None)
        if c_attn is not None and is_conv1d(c_attn) and is_conv1d(c_proj) and hasattr(m, "num_heads") \
                and not getattr(m, "is_cross_attention", False):
            hd, heads = m.head_dim, m.num_heads
            inner = heads * hd
            mems = _conv1d_members(_join(name, "c_attn"), c_attn, 0, "out", hd, (0, inner, 2 * inner))
            mems += _conv1d_members(_join(name, "c_proj"), c_proj, 1, "in", hd)

            def fix(model, keep, m=m, hd=hd):
                m.num_heads, m.split_size = len(keep), len(keep) * hd
                m.c_attn.nf = m.c_attn.weight.shape[1]

            groups.append(Group(name, "heads", heads, mems, [fix]))
        elif c_fc is not None and is_conv1d(c_fc) and c_proj is not None and is_conv1d(c_proj):
            mems = _conv1d_members(_join(name, "c_fc"), c_fc, 0, "out")
            mems += _conv1d_members(_join(name, "c_proj"), c_proj, 1, "in")

            def fix(model, keep, m=m):
                m.c_fc.nf = m.c_fc.weight.shape[1]

            groups.append(Group(name, "mlp", c_fc.nf, mems, [fix]))
    return groups
