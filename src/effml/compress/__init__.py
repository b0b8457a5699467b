"""Compression that pays: pruning (fine, channel, N:M), quantization (fake-quant, k-means, int8, int4),
Deep Compression, sensitivity scans, and predicted-vs-measured speed.

    from effml.compress import prune, PruneConfig, quantize, QuantConfig
    res = prune(model, PruneConfig(kind="channel", sparsity=0.5), example_inputs=(x,))
    res = quantize(model, QuantConfig(method="int8", mode="dynamic"))
"""

from effml.compress.deep_compression import (PAPER_SPARSITY, DeepCompressionConfig, DeepCompressionResult,
                                             deep_compress)
from effml.compress.io import load_compressed, save_compressed
from effml.compress.prune import KINDS, PruneConfig, PruneResult, channel_groups, prune
from effml.compress.quantize import METHODS, QuantConfig, QuantResult, freeze, quantize
from effml.compress.sensitivity import SensitivityResult, sensitivity

__all__ = ["KINDS", "METHODS", "PAPER_SPARSITY", "DeepCompressionConfig", "DeepCompressionResult", "PruneConfig",
           "PruneResult", "QuantConfig", "QuantResult", "SensitivityResult", "channel_groups", "deep_compress",
           "freeze", "load_compressed", "prune", "quantize", "save_compressed", "sensitivity"]
