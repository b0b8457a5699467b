"""Compression that pays: pruning (fine, channel, N:M), quantization (fake-quant, k-means, int8, int4),
Deep Compression, sensitivity scans, and predicted-vs-measured speed. One config class per method; the
config's type picks the method; every verb works in place (`result.model is model`).

    from effml.compress import ChannelPrune, DynamicInt8Config, FinePrune, compress, prune, quantize
    res = prune(model, ChannelPrune(sparsity=0.5), example_inputs=(x,))      # physically smaller
    res = quantize(model, DynamicInt8Config(smooth_alpha=0.8), calibration=batches)
    res.skipped                                                            # [(layer, reason), ...]
    rep = compress(model, [FinePrune(sparsity=0.8), KMeansConfig(bits=4)], data=bundle,
                   finetune=TrainLoopConfig(epochs=1, lr=5e-4))           # prepare, apply, fine-tune, finalize
    config_from_dict({"method": "weight-only", "bits": 4, "group_size": 64})
"""

from effml.compress.configs import (CONFIGS, ChannelPrune, CompressionConfig, DynamicInt8Config, FinePrune,
                                    KMeansConfig, LinearQuantConfig, NMPrune, StaticInt8Config, WeightOnlyConfig,
                                    config_from_dict)
from effml.compress.deep_compression import (PAPER_SPARSITY, DeepCompressionConfig, DeepCompressionResult,
                                             deep_compress)
from effml.compress.io import load_compressed, save_compressed
from effml.compress.prune import PRUNERS, PruneResult, channel_groups, prune
from effml.compress.quantize import QUANTIZERS, QuantResult, freeze, quantize
from effml.compress.sensitivity import SensitivityResult, sensitivity
from effml.compress.workflow import CompressionReport, Measure, compress
# the transformer methods register their configs and handlers (CONFIGS, QUANTIZERS, PRUNERS) on import, so
# config_from_dict({"method": "gptq" | "awq" | "heads" | "ffn" | "blocks", ...}) and the verbs know them
from effml.compress.awq import AWQConfig  # noqa: E402
from effml.compress.gptq import GPTQConfig  # noqa: E402
from effml.compress.transformer_prune import BlockPrune, FFNPrune, HeadPrune  # noqa: E402

__all__ = ["AWQConfig", "BlockPrune", "FFNPrune", "GPTQConfig", "HeadPrune", "CONFIGS", "PAPER_SPARSITY", "PRUNERS", "QUANTIZERS", "ChannelPrune", "CompressionConfig",
           "CompressionReport", "Measure", "compress",
           "DeepCompressionConfig", "DeepCompressionResult", "DynamicInt8Config", "FinePrune", "KMeansConfig",
           "LinearQuantConfig", "NMPrune", "PruneResult", "QuantResult", "SensitivityResult", "StaticInt8Config",
           "WeightOnlyConfig", "channel_groups", "config_from_dict", "deep_compress", "freeze", "load_compressed",
           "prune", "quantize", "save_compressed", "sensitivity"]
