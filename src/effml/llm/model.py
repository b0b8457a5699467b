"""A compact Llama-style decoder (gpt-fast layout): RMSNorm, RoPE, grouped-query attention, SwiGLU.

It runs the pretrained SmolLM2-135M-Instruct weights (`weights.load_smollm2`) with logits matching the
transformers implementation, and small models made here (tiny random ones for tests, the speculative draft).

    model = Transformer(ModelArgs.preset("tiny"))
    logits = model(tokens)                      # (B, T, vocab): causal attention over `tokens` only
    logits = model(tokens, cache=kv)            # with a KV cache (effml.llm.kvcache): positions continue

The attention reads keys/values from whatever cache the caller passes: the cache object owns storage and the
read (contiguous slices or paged blocks), the model owns the projections, RoPE and the MLP.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, dataclass, fields, replace

import torch
import torch.nn.functional as F
from torch import nn

from effml.errors import ConfigError
from effml.llm.rope import RoPE, RopeScaling
from effml import native
from effml.native import MAX_ROWS


@dataclass(frozen=True)
class ModelArgs:
    dim: int = 576
    n_layers: int = 30
    n_heads: int = 9
    n_kv_heads: int = 3
    vocab_size: int = 49152
    hidden_dim: int = 1536  # SwiGLU inner size
    norm_eps: float = 1e-5
    rope_theta: float = 100000.0
    max_seq_len: int = 8192
    tie_embeddings: bool = True
    head_tokens: int = 0  # > 0: the LM head scores only this many token ids (a draft's frequent tokens)
    qkv_bias: bool = False  # q, k, v projections with a bias (Qwen2)
    rope_scaling: RopeScaling | None = None  # long-context RoPE scaling (Llama 3.1/3.2's llama3, linear)
    head_size: int = 0  # width of an attention head; 0: dim // n_heads (Qwen3 and Mistral Nemo set their own)
    qk_norm: bool = False  # RMSNorm over each query and key head before RoPE (Qwen3)

    def __post_init__(self):
        for f in ("dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "hidden_dim", "max_seq_len"):
            if not isinstance(getattr(self, f), int) or getattr(self, f) <= 0:
                raise ConfigError(f"ModelArgs.{f} must be a positive int, got {getattr(self, f)!r}")
        if not isinstance(self.head_size, int) or self.head_size < 0:
            raise ConfigError(f"ModelArgs.head_size must be an int >= 0 (0: dim // n_heads), got {self.head_size!r}")
        if not self.head_size and self.dim % self.n_heads:
            raise ConfigError(f"ModelArgs.dim={self.dim} is not divisible by n_heads={self.n_heads} (set head_size "
                              f"for heads of another width)")
        if self.n_heads % self.n_kv_heads:
            raise ConfigError(f"ModelArgs.n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}")
        if self.head_dim % 2:
            raise ConfigError(f"ModelArgs head_dim={self.head_dim} must be even for RoPE")
        if not (0 <= self.head_tokens <= self.vocab_size):
            raise ConfigError(f"ModelArgs.head_tokens={self.head_tokens} must be in [0, vocab_size={self.vocab_size}]")
        if self.head_tokens and self.tie_embeddings:
            raise ConfigError("ModelArgs.head_tokens > 0 needs tie_embeddings=False (the head is a row subset)")
        if self.norm_eps <= 0 or self.rope_theta <= 0:
            raise ConfigError(f"ModelArgs.norm_eps and rope_theta must be > 0, got {self.norm_eps}, {self.rope_theta}")

    @property
    def head_dim(self) -> int:
        return self.head_size or self.dim // self.n_heads

    @classmethod
    def preset(cls, name: str, **overrides) -> ModelArgs:
        if name not in PRESETS:
            raise ConfigError(f"unknown model preset {name!r}; expected one of {', '.join(PRESETS)}")
        return replace(PRESETS[name], **overrides)

    @classmethod
    def from_dict(cls, d: dict) -> ModelArgs:
        known = {f.name for f in fields(cls)}
        extra = set(d) - known
        if extra:
            raise ConfigError(f"ModelArgs: unknown field(s) {', '.join(sorted(extra))}")
        if isinstance(d.get("rope_scaling"), dict):  # to_dict's form
            d = {**d, "rope_scaling": RopeScaling(**d["rope_scaling"])}
        return cls(**d)

    def to_dict(self) -> dict:
        return asdict(self)

    def params(self) -> int:
        """Parameter count (tied embeddings counted once)."""
        d, L, hd, inner = self.dim, self.n_layers, self.head_dim, self.n_heads * self.head_dim
        attn = d * inner + 2 * d * self.n_kv_heads * hd + inner * d  # wq, wk, wv, wo
        attn += (inner + 2 * self.n_kv_heads * hd) if self.qkv_bias else 0
        attn += 2 * hd if self.qk_norm else 0  # q_norm, k_norm weights
        per_layer = attn + 3 * d * self.hidden_dim + 2 * d  # + SwiGLU (w1, w2, w3) + 2 RMSNorm weights
        head = 0 if self.tie_embeddings else (self.head_tokens or self.vocab_size) * d
        return self.vocab_size * d + L * per_layer + d + head


PRESETS: dict[str, ModelArgs] = {
    # HuggingFaceTB/SmolLM2-135M(-Instruct) config.json: 30 layers, d=576, 9 heads, 3 KV heads, theta 1e5
    "smollm2-135m": ModelArgs(),
    # the same architecture at toy size, random weights: unit tests
    "tiny": ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=97, hidden_dim=128,
                      rope_theta=10000.0, max_seq_len=256),
}


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight.dtype == torch.float32:  # one fused op (not 7) computing the same in fp32
            if x.dtype == torch.float32 and x.device.type == "cpu" and not (
                    torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad)):
                ext = native.load()  # effml's kernel: ~2 us a decode row where torch's op takes ~15-110 us here
                if ext is not None:
                    return ext.rms_norm(x.contiguous(), self.weight.detach(), self.eps)
            return F.rms_norm(x.float(), (x.shape[-1],), self.weight, self.eps).to(x.dtype)
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)  # as transformers: in fp32
        return (self.weight * h.to(x.dtype)).to(x.dtype)  # a no-op cast unless weights and activations differ


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # x: (B, H, T, hd); cos/sin: (B, T, hd) -> broadcast over heads
    cos, sin = cos[:, None].to(x.dtype), sin[:, None].to(x.dtype)
    half = x.shape[-1] // 2
    rot = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rot * sin


def _rotate_bthd(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # x: (B, T, heads, hd) (q and k heads side by side: one rotation for both); cos/sin: (B, T, hd)
    half = x.shape[-1] // 2
    rot = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos[:, :, None] + rot * sin[:, :, None]


def gqa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """softmax(q kᵀ/√hd + mask) v with H_kv < H heads, without repeating K/V.

    q: (B, H, T, hd); k, v: (B, H_kv, S, hd); mask: (B, T, S) bool (True = may attend) or None (all).
    The n_rep = H / H_kv query heads that share a KV head are stacked along the query axis, so one SDPA call
    per KV head reads K/V once (the cache is never copied n_rep times). Returns (B, H, T, hd).
    """
    B, H, T, hd = q.shape
    Hkv = k.shape[1]
    rep = H // Hkv
    qg = q.reshape(B, Hkv, rep * T, hd)  # (B, H_kv, rep*T, hd): heads h*rep..h*rep+rep-1 share KV head h
    m = None
    if mask is not None:
        m = mask[:, None, None].expand(B, 1, rep, T, mask.shape[-1]).reshape(B, 1, rep * T, -1)  # (B,1,rep*T,S)
    out = F.scaled_dot_product_attention(qg, k, v, attn_mask=m)  # (B, H_kv, rep*T, hd)
    return out.reshape(B, H, T, hd)


def causal_mask(T: int, device=None) -> torch.Tensor:
    return torch.ones(T, T, dtype=torch.bool, device=device).tril()[None]  # (1, T, T)


class Attention(nn.Module):
    def __init__(self, a: ModelArgs):
        super().__init__()
        self.n_heads, self.n_kv, self.hd = a.n_heads, a.n_kv_heads, a.head_dim
        self.wq = nn.Linear(a.dim, a.n_heads * self.hd, bias=a.qkv_bias)
        self.wk = nn.Linear(a.dim, a.n_kv_heads * self.hd, bias=a.qkv_bias)
        self.wv = nn.Linear(a.dim, a.n_kv_heads * self.hd, bias=a.qkv_bias)
        self.wo = nn.Linear(a.n_heads * self.hd, a.dim, bias=False)
        self.qk_norm = a.qk_norm
        if a.qk_norm:  # Qwen3: each head's q and k normalised over its hd values (one weight shared by the heads)
            self.q_norm, self.k_norm = RMSNorm(self.hd, a.norm_eps), RMSNorm(self.hd, a.norm_eps)
        self.fused = False  # fuse_projections(): one wqkv matmul instead of wq, wk, wv

    def forward(self, x, cos, sin, cache, layer: int) -> torch.Tensor:
        B, T, _ = x.shape  # (B, T, C)
        if self.fused:
            H = self.n_heads
            qkv = self.wqkv(x).view(B, T, H + 2 * self.n_kv, self.hd)  # (B, T, H + 2 H_kv, hd)
            qk = qkv[:, :, :H + self.n_kv]  # (B, T, H + H_kv, hd)
            if self.qk_norm:
                qk = torch.cat((self.q_norm(qk[:, :, :H]), self.k_norm(qk[:, :, H:])), 2)
            qk = _rotate_bthd(qk, cos, sin)
            q, k = qk[:, :, :H].transpose(1, 2), qk[:, :, H:].transpose(1, 2)  # (B, H, T, hd), (B, H_kv, T, hd)
            v = qkv[:, :, H + self.n_kv:].transpose(1, 2)  # (B, H_kv, T, hd)
        else:
            q = self.wq(x).view(B, T, self.n_heads, self.hd)  # (B, T, H, hd)
            k = self.wk(x).view(B, T, self.n_kv, self.hd)  # (B, T, H_kv, hd)
            if self.qk_norm:
                q, k = self.q_norm(q), self.k_norm(k)
            q, k = q.transpose(1, 2), k.transpose(1, 2)  # (B, H, T, hd), (B, H_kv, T, hd)
            v = self.wv(x).view(B, T, self.n_kv, self.hd).transpose(1, 2)  # (B, H_kv, T, hd)
            q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
        if cache is None:
            y = gqa_attention(q, k, v, causal_mask(T, x.device) if T > 1 else None)  # (B, H, T, hd)
        else:
            y = cache.attend(layer, q, k, v)  # the cache stores k, v and attends over everything it holds
        return self.wo(y.transpose(1, 2).reshape(B, T, -1))  # (B, T, C)


class FeedForward(nn.Module):
    def __init__(self, a: ModelArgs):
        super().__init__()
        self.w1 = nn.Linear(a.dim, a.hidden_dim, bias=False)  # gate
        self.w3 = nn.Linear(a.dim, a.hidden_dim, bias=False)  # up
        self.w2 = nn.Linear(a.hidden_dim, a.dim, bias=False)  # down
        self.fused = False  # fuse_projections(): one w13 matmul (gate and up) instead of w1, w3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused:
            gate, up = self.w13(x).chunk(2, -1)  # (B, T, hidden) each
            return self.w2(F.silu(gate) * up)
        return self.w2(F.silu(self.w1(x)) * self.w3(x))  # (B, T, C)


class Block(nn.Module):
    def __init__(self, a: ModelArgs):
        super().__init__()
        self.attention_norm = RMSNorm(a.dim, a.norm_eps)
        self.attention = Attention(a)
        self.ffn_norm = RMSNorm(a.dim, a.norm_eps)
        self.feed_forward = FeedForward(a)

    def forward(self, x, cos, sin, cache, layer: int) -> torch.Tensor:
        x = x + self.attention(self.attention_norm(x), cos, sin, cache, layer)
        return x + self.feed_forward(self.ffn_norm(x))


class Transformer(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.tok_embeddings = nn.Embedding(args.vocab_size, args.dim)
        self.layers = nn.ModuleList(Block(args) for _ in range(args.n_layers))
        self.norm = RMSNorm(args.dim, args.norm_eps)
        self.output = nn.Linear(args.dim, args.head_tokens or args.vocab_size, bias=False)
        if args.tie_embeddings:
            self.output.weight = self.tok_embeddings.weight  # one tensor
        if args.head_tokens:  # row i of the head scores token head_ids[i]; the rest get -inf
            self.register_buffer("head_ids", torch.arange(args.head_tokens))
        self.rope = RoPE(args.head_dim, args.rope_theta, args.rope_scaling)
        self.act_dtype: torch.dtype | None = None  # activations' dtype when it differs from the embedding's
        self.fast_decode = False  # engine.prepare(): decode steps through effml.llm.fastpath's fused ops
        self._fast_plan: list = []  # fastpath.enable: per layer (norm, eps, direct projections ...)
        self._fast_layers = None  # fastpath.enable: the same for effml.native.decode_layers_rows (one C++ call)
        self._fast_head = None  # fastpath.enable: (final norm, head) as direct kernel calls on <= MAX_ROWS fp32 rows

    @property
    def vocab_size(self) -> int:
        return self.args.vocab_size

    def hidden(self, tokens: torch.Tensor, cache=None) -> torch.Tensor:
        """tokens (B, T) int64 -> the last block's hidden states (B, T, C) (before the final norm and head)."""
        if tokens.ndim != 2 or tokens.shape[1] == 0:
            raise ConfigError(f"Transformer input must be (batch, tokens) with at least one token, "
                              f"got shape {tuple(tokens.shape)}")
        B, T = tokens.shape
        if self.fast_decode and cache is not None:
            from effml.llm.fastpath import fast_hidden

            x = fast_hidden(self, tokens, cache)  # None: not a call the fused path takes (the generic one runs)
            if x is not None:
                return x
        if cache is None:
            positions = torch.arange(T, device=tokens.device).expand(B, T)  # (B, T)
        else:
            positions = cache.begin(T)  # (B, T): each sequence continues from its own length
        end = int(positions.max()) + 1
        if end > self.args.max_seq_len:
            raise ConfigError(f"sequence of {end} tokens exceeds the model's context max_seq_len="
                              f"{self.args.max_seq_len}; shorten the prompt or max_new_tokens")
        cos, sin = self.rope(positions)  # (B, T, hd)
        x = self.tok_embeddings(tokens)  # (B, T, C)
        if self.act_dtype is not None:
            x = x.to(self.act_dtype)
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)  # once, not in every layer
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, cache, i)
        if cache is not None:
            cache.commit(T)
        return x

    def forward(self, tokens: torch.Tensor, cache=None, last: int | None = None,
                pick: torch.Tensor | None = None) -> torch.Tensor:
        """tokens (B, T) int64 -> logits (B, T, vocab).

        last: only the last `last` positions' logits (B, last, V), none for 0 (a prompt's pass that only fills the
        cache); pick (B,) int64: only position pick[b] of row b (B, 1, V) (a right-padded batch's last real tokens).
        The LM head is the largest matmul: skip what nobody reads.
        """
        if last is not None and not 0 <= last <= tokens.shape[1]:
            raise ConfigError(f"last={last}: the number of last positions to score must be 0 to the {tokens.shape[1]} "
                              f"tokens fed")
        x = self.hidden(tokens, cache)  # (B, T, C)
        if last == 0:  # SmolLM2's fp32 head is 113 MB: ~6 ms of a prompt's pass read for logits nobody reads
            return x.new_zeros((x.shape[0], 0, self.args.vocab_size), dtype=torch.float32)
        if last is not None:
            x = x[:, -last:]  # (B, last, C)
        elif pick is not None:
            x = x[torch.arange(x.shape[0]), pick][:, None]  # (B, 1, C)
        if self._fast_head is not None and x.dtype == torch.float32 and x.device.type == "cpu" and \
                x.shape[0] * x.shape[1] <= MAX_ROWS and not torch.is_grad_enabled():
            norm, head = self._fast_head  # the modules' own kernels, without their Python wrappers (~40 us a step)
            logits = head(norm(x.reshape(-1, x.shape[-1]).contiguous())).reshape(*x.shape[:-1], -1)
        else:
            logits = self.output(self.norm(x))  # (B, T, V) or (B, T, head_tokens)
        if self.args.head_tokens:
            full = logits.new_full((*logits.shape[:-1], self.args.vocab_size), -math.inf)  # (B, T, V)
            logits = full.index_copy_(-1, self.head_ids, logits)
        return logits.float()  # a no-op in fp32; bf16 logits would tie more often under argmax


def compute_dtype(model: Transformer) -> torch.dtype:
    """The activations' (and so the KV cache's) dtype: what `act_dtype` says, else the embedding's."""
    return model.act_dtype or model.tok_embeddings.weight.dtype


def _fused(parts: list[nn.Module], name: str) -> nn.Module | None:
    """One module computing the parts' outputs concatenated on the last axis, or None if they cannot be fused."""
    from effml.compress.weight_only import WeightOnlyLinear

    if all(type(p) is nn.Linear for p in parts):
        w, bias = parts[0].weight, parts[0].bias is not None
        if any(p.weight.dtype != w.dtype or (p.bias is not None) != bias for p in parts):
            return None
        lin = nn.Linear(w.shape[1], sum(p.out_features for p in parts), bias=bias, dtype=w.dtype)
        lin.weight = nn.Parameter(torch.cat([p.weight.detach() for p in parts]), requires_grad=False)  # (ΣO, I)
        if bias:
            lin.bias = nn.Parameter(torch.cat([p.bias.detach() for p in parts]), requires_grad=False)  # (ΣO,)
        return lin
    if all(type(p) is WeightOnlyLinear for p in parts):
        try:
            return WeightOnlyLinear.cat(parts, name)
        except ConfigError:
            return None
    return None  # e.g. torch.ao dynamic int8 layers: left as they are


def fuse_projections(model: Transformer) -> list[str]:
    """In place: wq, wk, wv -> one wqkv and w1, w3 -> one w13 per block (one weight read, one kernel call each
    instead of three and two). Exact: the fused weight is the rows of the parts stacked. Returns the fused names.

    Parameter names change (a fused model's state_dict has wqkv/w13): fuse after loading and compressing.
    """
    done = []
    for i, blk in enumerate(model.layers):
        att, ff = blk.attention, blk.feed_forward
        if not att.fused:
            f = _fused([att.wq, att.wk, att.wv], f"layers.{i}.attention.wqkv")
            if f is not None:
                del att.wq, att.wk, att.wv
                att.wqkv, att.fused = f, True
                done.append(f"layers.{i}.attention.wqkv")
        if not ff.fused:
            f = _fused([ff.w1, ff.w3], f"layers.{i}.feed_forward.w13")
            if f is not None:
                del ff.w1, ff.w3
                ff.w13, ff.fused = f, True
                done.append(f"layers.{i}.feed_forward.w13")
    return done


@contextlib.contextmanager
def no_init():
    """Build modules with uninitialised (torch.empty) weights, for loading a checkpoint right after.

    Faster than the meta device here: the first meta-device normal_ imports torch's decomposition machinery
    (seconds), and skipping the random init of 134 M parameters saves a second more.
    """
    saved = {cls: cls.reset_parameters for cls in (nn.Linear, nn.Embedding)}
    try:
        for cls in saved:
            cls.reset_parameters = lambda self: None
        yield
    finally:
        for cls, fn in saved.items():
            cls.reset_parameters = fn


def build(args: ModelArgs | str, seed: int = 0, dtype: torch.dtype = torch.float32, std: float = 0.02) -> Transformer:
    """A model with seeded random weights, normal(0, std) (0.02 = Llama's initializer_range); norms at 1.

    Tests use a larger std so that a random model's next-token distributions are peaked, not near-uniform.
    """
    if isinstance(args, str):
        args = ModelArgs.preset(args)
    gen = torch.Generator().manual_seed(seed)
    model = Transformer(args)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not name.endswith("norm.weight"):
                p.copy_(torch.randn(p.shape, generator=gen) * std)
    return model.to(dtype).eval()
