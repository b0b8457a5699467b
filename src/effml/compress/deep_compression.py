"""Deep Compression (Han et al., ICLR 2016): prune -> fine-tune -> k-means share -> fine-tune -> Huffman.

    res = deep_compress(model, data, DeepCompressionConfig(per_layer=PAPER_SPARSITY["lenet300"]))
    res.stages  # dense, pruned, quantized, huffman: bytes, ratio, bits per non-zero weight, accuracy

Storage at each stage (every number counted from the tensors, biases included at fp32):
- dense: every parameter at 32 bits.
- pruned: each weight layer in relative-index sparse format (masks.py): per entry a 32-bit weight and an
  `index_bits` gap (8 for conv, 5 for fc, as the paper), filler zeros included.
- quantized: per entry a `bits`-bit code instead (code 0 is the zero of fillers; 2^bits - 1 k-means
  centroids are learned), plus the fp32 codebook.
- huffman: the codes and the gaps of each layer Huffman-coded separately, plus both code tables.
Pruning is iterative (the paper's 'iterative pruning'): `prune_steps` rounds towards the target sparsity,
each followed by `prune_epochs` of fine-tuning with the masks held; then the centroids are fine-tuned.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Mapping

import torch
from torch import nn
from torch.nn.utils import parametrize

from effml.compress.huffman import HuffmanCode
from effml.compress.kmeans import KMeansQuant
from effml.compress.layers import check_fraction, count_params
from effml.compress.masks import relative_index_stream
from effml.compress.configs import FinePrune
from effml.compress.prune import prune
from effml.errors import ConfigError
from effml.progress import Progress

# The paper's per-layer sparsities (Han et al. 2016, Tables 2-3: weights kept 8/9/26% and 66/12/8/19%), keyed by
# effml module names: zoo `mlp` for LeNet-300-100, the Caffe LeNet-5 (conv 20, conv 50, fc 500) of the benchmark.
PAPER_SPARSITY = {
    "lenet300": {"1": 0.92, "3": 0.91, "5": 0.74},
    "lenet5-caffe": {"conv1": 0.34, "conv2": 0.88, "fc1": 0.92, "fc2": 0.81},
}


@dataclass(frozen=True)
class DeepCompressionConfig:
    sparsity: float = 0.9  # every weight layer not in per_layer
    per_layer: Mapping[str, float] | None = None
    prune_steps: int = 3
    prune_epochs: float = 1.0  # fine-tuning after each pruning step
    quant_epochs: float = 1.0  # centroid fine-tuning
    conv_bits: int = 8
    fc_bits: int = 5
    conv_index_bits: int = 8
    fc_index_bits: int = 5
    lr: float = 1e-3
    quant_lr: float = 1e-4
    seed: int = 0

    def __post_init__(self):
        check_fraction(self.sparsity, "DeepCompressionConfig.sparsity")
        if self.per_layer is not None:
            for k, v in self.per_layer.items():
                check_fraction(v, f"DeepCompressionConfig.per_layer[{k!r}]")
            object.__setattr__(self, "per_layer", dict(self.per_layer))  # a copy: later edits do not leak in
        for f in ("conv_bits", "fc_bits", "conv_index_bits", "fc_index_bits", "prune_steps"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"DeepCompressionConfig.{f} must be an integer >= 1, got {v!r}")
        if self.prune_epochs < 0 or self.quant_epochs < 0:
            raise ConfigError("DeepCompressionConfig epochs must be >= 0")

    def bits_for(self, m: nn.Module) -> tuple[int, int]:
        """(weight bits, index bits) of a layer: conv or fc."""
        conv = isinstance(m, nn.modules.conv._ConvNd)
        return (self.conv_bits, self.conv_index_bits) if conv else (self.fc_bits, self.fc_index_bits)


@dataclass
class Stage:
    name: str
    accuracy: float | None
    bytes: int
    ratio: float  # dense bytes / these bytes
    bits_per_nonzero: float  # weight-layer bits / non-zero weights (biases excluded)
    nonzero: int

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class DeepCompressionResult:
    model: nn.Module = field(repr=False)
    stages: list[Stage]
    layers: dict[str, dict]
    config: DeepCompressionConfig

    def stage(self, name: str) -> Stage:
        return next(s for s in self.stages if s.name == name)

    def to_dict(self) -> dict:
        return {"stages": [s.to_dict() for s in self.stages], "layers": self.layers, "config": asdict(self.config)}


def layer_storage(w: torch.Tensor, mask: torch.Tensor, bits: int, index_bits: int,
                  codes: torch.Tensor | None = None, codebook_size: int = 0) -> dict:
    """Bits of one sparse layer at each stage; `codes` (nnz,) are the non-zeros' codes in 1..2^bits-1."""
    gaps, filler = relative_index_stream(mask, index_bits)
    entries, nnz = gaps.numel(), int(mask.sum())
    out = {"nonzero": nnz, "entries": entries, "fillers": entries - nnz, "numel": w.numel(),
           "pruned_bits": entries * (32 + index_bits)}
    if codes is not None:
        stream = torch.zeros(entries, dtype=torch.long)  # code 0: filler zeros
        stream[~filler] = codes
        hw, hi = HuffmanCode.build(stream), HuffmanCode.build(gaps)
        out["quantized_bits"] = entries * (bits + index_bits) + codebook_size * 32
        out["huffman_bits"] = (hw.bits(stream) + hi.bits(gaps) + hw.table_bits(bits) + hi.table_bits(index_bits)
                               + codebook_size * 32)
    return out


def _weight_layers(model: nn.Module, names) -> dict[str, nn.Module]:
    mods = dict(model.named_modules())
    return {n: mods[n] for n in names}


def deep_compress(model: nn.Module, data, config: DeepCompressionConfig | None = None,
                  progress: Progress | None = None) -> DeepCompressionResult:
    """Run the pipeline in place on a trained classifier; `data` is a DataBundle (train + test)."""
    from effml.train.classifier import evaluate, train_classifier

    cfg = config or DeepCompressionConfig()
    progress = progress or (lambda what, frac: None)
    total_steps = cfg.prune_steps + 2
    dense_bytes = count_params(model) * 4
    stages = [Stage("dense", evaluate(model, data.test), dense_bytes, 1.0, 32.0,
                    sum(int(p.count_nonzero()) for p in model.parameters()))]
    # 1. iterative pruning with fine-tuning, masks held through every optimizer step
    masks = None
    for step in range(1, cfg.prune_steps + 1):
        frac = step / cfg.prune_steps
        per = {k: v * frac for k, v in (cfg.per_layer or {}).items()}
        if masks is not None:
            masks.detach()
        res = prune(model, FinePrune(sparsity=cfg.sparsity * frac if not cfg.per_layer else 0.0,
                                     per_layer=per or None, scope="layer"))
        masks = res.masks
        progress(f"pruning step {step}/{cfg.prune_steps}: fine-tuning", (step - 1) / total_steps)
        if cfg.prune_epochs > 0:
            train_classifier(model, data.train, epochs=cfg.prune_epochs, lr=cfg.lr, seed=cfg.seed + step,
                step_hook=masks.apply, evaluate_after=False)
    masks.detach()
    layers = _weight_layers(model, masks.layers)
    pruned_acc = evaluate(model, data.test)
    # 2. k-means weight sharing of the non-zeros (2^bits - 1 centroids; code 0 = zero), centroids fine-tuned
    progress("k-means weight sharing: fine-tuning centroids", cfg.prune_steps / total_steps)
    for name, m in layers.items():
        bits, _ = cfg.bits_for(m)
        km = KMeansQuant(m.weight.detach(), bits, masks.layers[name].mask, "centroids", k=2 ** bits - 1)
        parametrize.register_parametrization(m, "weight", km, unsafe=True)
        m.parametrizations.weight.original.requires_grad_(False)
    if cfg.quant_epochs > 0:
        train_classifier(model, data.train, epochs=cfg.quant_epochs, lr=cfg.quant_lr, seed=cfg.seed + 100,
            evaluate_after=False)
    codes = {}
    with torch.no_grad():
        for name, m in layers.items():
            km = m.parametrizations.weight[0]
            codes[name] = (km.index.long()[km.mask] + 1, km.codebook.numel())
            parametrize.remove_parametrizations(m, "weight", leave_parametrized=True)
            m.weight.requires_grad_(True)
    quant_acc = evaluate(model, data.test)
    progress("Huffman coding", (cfg.prune_steps + 1) / total_steps)
    # 3. sizes, stage by stage
    table, other_bits, nnz = {}, 0, 0
    weight_ids = {id(m.weight) for m in layers.values()}
    for p in {id(p): p for p in model.parameters()}.values():
        if id(p) not in weight_ids:
            other_bits += p.numel() * 32
    for name, m in layers.items():
        bits, ibits = cfg.bits_for(m)
        mask = masks.layers[name].mask
        c, k = codes[name]
        table[name] = {"bits": bits, "index_bits": ibits, "sparsity": 1 - mask.float().mean().item(),
                       **layer_storage(m.weight, mask, bits, ibits, c, k)}
        nnz += table[name]["nonzero"]
    for stage, acc, key in (("pruned", pruned_acc, "pruned_bits"), ("quantized", quant_acc, "quantized_bits"),
                            ("huffman", quant_acc, "huffman_bits")):
        wbits = sum(t[key] for t in table.values())
        nbytes = math.ceil((wbits + other_bits) / 8)
        stages.append(Stage(stage, acc, nbytes, dense_bytes / nbytes, wbits / max(nnz, 1), nnz))
    progress("done", 1.0)
    return DeepCompressionResult(model, stages, table, cfg)
