"""A tiny GPT (nanoGPT layout): pre-norm blocks, causal SDPA, tied input/output embeddings."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from effml.errors import ConfigError
from effml.zoo.registry import zoo_model


@dataclass(frozen=True)
class GPTConfig:
    vocab_size: int = 65  # the KJV corpus has 65 distinct characters
    block_size: int = 128
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    mlp_ratio: int = 4
    dropout: float = 0.0

    def __post_init__(self):
        for field in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd", "mlp_ratio"):
            if getattr(self, field) <= 0:
                raise ConfigError(f"GPTConfig.{field} must be positive, got {getattr(self, field)}")
        if self.n_embd % self.n_head:
            raise ConfigError(f"GPTConfig.n_embd={self.n_embd} is not divisible by n_head={self.n_head}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"GPTConfig.dropout must be in [0, 1), got {self.dropout}")

    def non_embedding_params(self) -> int:
        """(4 + 2·mlp_ratio)·L·d² (= 12·L·d² at ratio 4) plus biases and norms: the N of Kaplan et al. 2020."""
        d, L = self.n_embd, self.n_layer
        per_block = 3 * d * d + d * d + 2 * self.mlp_ratio * d * d  # qkv, proj, mlp weights
        per_block += 3 * d + d + self.mlp_ratio * d + d + 4 * d  # biases (qkv, proj, fc, fc-out) and 2 LayerNorms
        return L * per_block + 2 * d  # + the final LayerNorm


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head = config.n_head
        self.qkv = nn.Linear(config.n_embd, 3 * config.n_embd)
        self.proj = nn.Linear(config.n_embd, config.n_embd)
        self.dropout = config.dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)  # 3 x (B, T, C)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, H, T, hd)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                           dropout_p=self.dropout if self.training else 0.0)  # (B, H, T, hd)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class Block(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(config.n_embd)
        self.attn = CausalSelfAttention(config)
        self.ln2 = nn.LayerNorm(config.n_embd)
        self.mlp = nn.Sequential(nn.Linear(config.n_embd, config.mlp_ratio * config.n_embd), nn.GELU(),
                                 nn.Linear(config.mlp_ratio * config.n_embd, config.n_embd))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.cfg = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.block_size, config.n_embd)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # tied: one tensor, counted once

    def forward(self, idx: torch.Tensor) -> torch.Tensor:  # idx: (B, T) int64
        T = idx.shape[1]
        if T > self.cfg.block_size:
            raise ConfigError(f"sequence length {T} exceeds GPTConfig.block_size={self.cfg.block_size}")
        pos = torch.arange(T, device=idx.device)
        x = self.wte(idx) + self.wpe(pos)  # (B, T, C)
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.ln_f(x))  # (B, T, vocab)


def init_gpt_weights(model: GPT, std: float = 0.02, scale_residual: bool = True) -> None:
    """GPT-2's initialisation (as nanoGPT): Linear and Embedding weights N(0, std), biases 0; with
    `scale_residual`, the projections into the residual stream (attn.proj, mlp.2) N(0, std / sqrt(2 n_layer)).
    The zoo GPT otherwise keeps PyTorch's defaults, whose N(0, 1) tied embeddings start a character model's
    loss at tens of nats instead of ln(65) = 4.17 and cost a visible share of a few-hundred-step run."""
    import math

    n_layer = len(model.blocks)
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Embedding)):
            scale = 1 / math.sqrt(2 * n_layer) if scale_residual and name.endswith(("attn.proj", "mlp.2")) else 1.0
            torch.nn.init.normal_(module.weight, mean=0.0, std=std * scale)
            if getattr(module, "bias", None) is not None:
                torch.nn.init.zeros_(module.bias)


@zoo_model("tiny_gpt", input_shape=(1, 64), vocab=65)
def tiny_gpt(**overrides) -> nn.Module:
    """Tiny character-level GPT (4 layers, d=128, causal SDPA, tied embeddings)."""
    return GPT(GPTConfig(**overrides))
