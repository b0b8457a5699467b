"""Block-by-block calibration for transformers (the GPTQ/AWQ recipe): one block in memory at a time.

    blocks = find_blocks(model)                        # ("model.layers", ModuleList) for effml, HF Llama, GPT-2, BERT
    inputs = block_inputs(model, blocks, calibration)  # what block 0 receives, per calibration batch
    for i, block in enumerate(blocks):
        ... collect statistics with hooks while running `run_block(block, inp)` for every inp ...
        ... change the block ...
        inputs = [next_input(inp, run_block(block, inp)) for inp in inputs]   # feed the *changed* block's output on

Block 0's inputs (positional and keyword arguments: hidden states, RoPE cos/sin, attention masks) are caught with a
forward pre-hook that stops the model right there, so the layers after it are never run on the full model; every
later block receives the previous block's output with the same other arguments. This works on effml's
`Transformer` and on transformers' decoder/encoder layers without tracing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch
from torch import nn

from effml.compress.hf_layers import is_linear_like
from effml.errors import ConfigError


@dataclass
class BlockInput:
    args: tuple  # args[0] is the hidden states (B, T, C)
    kwargs: dict


class _Stop(Exception):
    pass


def find_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The model's stack of repeated blocks: the nn.ModuleList holding the most weight layers."""
    best, best_n = None, 0
    for name, m in model.named_modules():
        if isinstance(m, nn.ModuleList) and len(m) > 0:
            n = sum(1 for blk in m for sub in blk.modules() if is_linear_like(sub))
            if n > best_n:
                best, best_n = (name, m), n
    if best is None:
        raise ConfigError(f"{type(model).__name__} has no stack of blocks (an nn.ModuleList of layers with "
                          "Linear/Conv1D weights): block-wise calibration needs a transformer")
    return best


def check_tokens(model: nn.Module, calibration: torch.Tensor) -> torch.Tensor:
    """Calibration token ids (n, T) int64, checked against the model's vocabulary."""
    if not isinstance(calibration, torch.Tensor):
        raise ConfigError(f"calibration must be a (samples, tokens) int64 tensor of token ids, got "
                          f"{type(calibration).__name__}")
    if calibration.dtype not in (torch.int64, torch.int32) or calibration.ndim != 2 or calibration.shape[1] < 1:
        raise ConfigError(f"calibration must be a (samples, tokens) integer tensor of token ids, got "
                          f"{tuple(calibration.shape)} {calibration.dtype}")
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if emb is None:
        emb = next((m for m in model.modules() if isinstance(m, nn.Embedding)), None)
    vocab = emb.num_embeddings if emb is not None else None
    if vocab is not None and (int(calibration.max()) >= vocab or int(calibration.min()) < 0):
        raise ConfigError(f"calibration token ids span [{int(calibration.min())}, {int(calibration.max())}] but the "
                          f"model's vocabulary has {vocab} tokens: tokenize the calibration text with the model's "
                          "own tokenizer")
    return calibration.long()


def calibration_calls(model: nn.Module, calibration, batch_size: int = 1) -> list[tuple[tuple, dict]]:
    """(args, kwargs) of each calibration forward: token ids (n, T) in batches of `batch_size`, or an iterable of
    batches as a user's data loader gives them (a tensor of ids, a tuple whose first item is the ids, or a dict of
    keyword inputs such as input_ids + attention_mask). Every token-id tensor is checked against the vocabulary."""
    if isinstance(calibration, torch.Tensor):
        ids = check_tokens(model, calibration)
        return [((ids[i:i + batch_size],), {}) for i in range(0, ids.shape[0], batch_size)]
    if calibration is None or isinstance(calibration, (str, bytes)) or not hasattr(calibration, "__iter__"):
        raise ConfigError(f"calibration must be token ids (samples, tokens) or an iterable of batches, got "
                          f"{type(calibration).__name__}")
    calls = []
    for i, batch in enumerate(calibration):
        if isinstance(batch, dict):
            if "input_ids" in batch:
                check_tokens(model, batch["input_ids"])
            calls.append(((), dict(batch)))
        elif isinstance(batch, (tuple, list)) and batch:
            calls.append(((check_tokens(model, batch[0]),), {}))
        elif isinstance(batch, torch.Tensor):
            calls.append(((check_tokens(model, batch),), {}))
        else:
            raise ConfigError(f"calibration batch {i} is {type(batch).__name__}: expected token ids, a tuple whose "
                              "first item is token ids, or a dict of keyword inputs")
    if not calls:
        raise ConfigError("calibration has no batches")
    return calls


@torch.no_grad()
def block_inputs(model: nn.Module, blocks: nn.ModuleList, calibration, batch_size: int = 1) -> list[BlockInput]:
    """Run the model on each calibration batch (`calibration_calls`) up to block 0 and keep what block 0 receives."""
    calls = calibration_calls(model, calibration, batch_size)
    caught: list[BlockInput] = []

    def hook(mod, args, kwargs):
        caught.append(BlockInput(tuple(args), dict(kwargs)))
        raise _Stop

    h = blocks[0].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for args, kwargs in calls:
            try:
                model(*args, **kwargs)
            except _Stop:
                pass
    finally:
        h.remove()
    if len(caught) != len(calls):
        raise ConfigError("the model never reached its first block on the calibration batches")
    return caught


def hidden_of(inp: BlockInput) -> torch.Tensor:
    return inp.args[0] if inp.args else inp.kwargs["hidden_states"]


def run_block(block: nn.Module, inp: BlockInput) -> torch.Tensor:
    """The block's output hidden states (B, T, C) (the first item when it returns a tuple)."""
    out = block(*inp.args, **inp.kwargs)
    return out[0] if isinstance(out, (tuple, list)) else out


def next_input(inp: BlockInput, hidden: torch.Tensor) -> BlockInput:
    if inp.args:
        return BlockInput((hidden,) + inp.args[1:], inp.kwargs)
    return BlockInput((), {**inp.kwargs, "hidden_states": hidden})


def block_layers(block: nn.Module, skip: Iterable[str] = ()) -> dict[str, nn.Module]:
    """name (inside the block) -> Linear/Conv1D module."""
    skip = set(skip)
    return {n: m for n, m in block.named_modules() if is_linear_like(m) and n not in skip}


class InputCollector:
    """Forward hooks that hand each named layer's input (N, in) to `fn(name, x)` while active."""

    def __init__(self, layers: dict[str, nn.Module], fn):
        self.handles = [m.register_forward_hook(lambda mod, i, o, n=n: fn(n, i[0].detach().reshape(-1, i[0].shape[-1])))
                        for n, m in layers.items()]

    def remove(self):
        for h in self.handles:
            h.remove()
