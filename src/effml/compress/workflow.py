"""One compression workflow for the library, the CLI and the study: prepare -> apply -> fine-tune -> finalize
-> measure, for a chain of per-method configs.

    rep = compress(model, [ChannelPrune(sparsity=0.5), StaticInt8Config()], data=bundle,
                   finetune=TrainLoopConfig(epochs=1, lr=5e-4), calibration=batches, example_inputs=(x,))
    rep.model, rep.stored_bytes, rep.skipped, rep.to_dict()

In place: `model` itself is compressed and `rep.model is model` (each verb works in place). Per step:
pruning fine-tunes with the masks held (gradient hooks, re-applied after every optimizer step), then detaches
them; quantization with qat=True trains through the straight-through estimator, then freezes. With
`measure=Measure(...)` a dense copy is kept and both are counted (effml.profile), evaluated (accuracy on
`data.test` when data is a DataBundle), predicted on a device and timed side by side.
Also here: the steps `effml prune` / `effml quantize` need around it (data that fits a model, weights, facts).
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import torch
from torch import nn

from effml.compress.configs import (ChannelPrune, CompressionConfig, DynamicInt8Config, FinePrune, KMeansConfig,
                                    LinearQuantConfig, NMPrune, StaticInt8Config, WeightOnlyConfig)
from effml.compress.layers import count_nonzero, count_params, param_bytes
from effml.compress.prune import PRUNERS, PruneResult, prune
from effml.compress.quantize import QUANTIZERS, QuantResult, freeze, quantize
from effml.compress.speed import SpeedCheck
from effml.errors import ConfigError, EffmlError
from effml.guards import check_fits_ram, module_bytes
from effml.progress import Progress


@dataclass
class ModelFacts:
    params: int
    nonzero: int
    fp32_bytes: int
    stored_bytes: int  # as the compression stores it (sparse format, codes, smaller model)
    macs: int | None  # None when the model's ops could not be counted (e.g. packed int8 kernels)
    flops: int | None
    accuracy: float | None = None
    note: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Measure:
    """What `compress` measures before and after: counted cost always; latency predicted on `hw` (None: no
    prediction) and timed side by side for `rounds` rounds (0: not timed). forward_kwargs: the model's keyword
    inputs."""

    hw: object = "local"  # a catalog name or a Device
    rounds: int = 10
    forward_kwargs: dict = field(default_factory=dict)
    device: str = "cpu"  # where the before/after timing runs (copies moved there; cuda: CUDA events)

    def __post_init__(self):
        if isinstance(self.rounds, bool) or not isinstance(self.rounds, int) or self.rounds < 0:
            raise ConfigError(f"Measure.rounds must be an integer >= 0, got {self.rounds!r}")
        from effml.measure.device import resolve_device

        object.__setattr__(self, "device", resolve_device(self.device, flag="Measure.device"))  # cuda -> cuda:0


@dataclass
class CompressionReport:
    """What `compress` did: the (same, now compressed) model, each step's result, and the measurements."""

    model: nn.Module = field(repr=False)
    configs: list[CompressionConfig]
    results: list[PruneResult | QuantResult] = field(repr=False)
    stored_bytes: int
    codes: dict[str, dict] | None = field(default=None, repr=False)  # quantization codes (for save_compressed)
    before: ModelFacts | None = None
    after: ModelFacts | None = None
    speed: SpeedCheck | None = None
    notes: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (layer, reason), every step's

    @property
    def technique(self) -> str:
        return " + ".join(f"{verb_of(c)} {c.name}" for c in self.configs)

    def to_dict(self) -> dict:
        one = len(self.configs) == 1
        cfgs = [c.to_dict() for c in self.configs]
        res = [r.to_dict() for r in self.results]
        return {"technique": self.technique, "config": cfgs[0] if one else cfgs, "result": res[0] if one else res,
                "stored_bytes": self.stored_bytes,
                "before": self.before.to_dict() if self.before else None,
                "after": self.after.to_dict() if self.after else None,
                "size_ratio": self.before.fp32_bytes / self.after.stored_bytes
                if self.before and self.after and self.after.stored_bytes else None,
                "speed": self.speed.to_dict() if self.speed is not None else None,
                "notes": list(self.notes), "skipped": [list(s) for s in self.skipped]}


def verb_of(config) -> str:
    """"prune" or "quantize": which verb a config belongs to (by the registry its class is in)."""
    if any(c in PRUNERS for c in type(config).__mro__):
        return "prune"
    if any(c in QUANTIZERS for c in type(config).__mro__):
        return "quantize"
    raise ConfigError(f"{type(config).__name__} is not a registered pruning or quantization config; known: "
                      f"{', '.join(c.__name__ for c in [*PRUNERS, *QUANTIZERS])}")


# the change each method makes, as the roofline prediction (compress/speed.py) prices it
SPEED_CHANGE: dict[type, str] = {FinePrune: "sparse", NMPrune: "sparse", ChannelPrune: "channel",
                                 LinearQuantConfig: "none", KMeansConfig: "none", DynamicInt8Config: "int8",
                                 StaticInt8Config: "int8"}


def speed_change(configs: Sequence[CompressionConfig]) -> str:
    """The change priced for a chain: the last integer-kernel quantization, else channel, else sparse/none."""
    changes = [f"int{c.bits}-weight" if isinstance(c, WeightOnlyConfig) else SPEED_CHANGE.get(type(c), "none")
               for c in configs]
    for pick in (lambda x: x.startswith("int"), lambda x: x == "channel", lambda x: x == "sparse"):
        hits = [x for x in changes if pick(x)]
        if hits:
            return hits[-1]
    return "none"


def _train_batches(data):
    return getattr(data, "train", data)


def compress(model: nn.Module, configs: CompressionConfig | Sequence[CompressionConfig], *, data=None,
             finetune=None, example_inputs: tuple | None = None, calibration: Iterable | None = None,
             measure: Measure | None = None, progress: Progress | None = None) -> CompressionReport:
    """Apply a chain of pruning/quantization configs to `model` IN PLACE (`report.model is model`).

    data: a DataBundle (train on .train, accuracy on .test) or (x, y) training batches: the Taylor criterion,
    fine-tuning, and tracing when example_inputs is None. finetune: an effml.train.classifier.TrainLoopConfig run
    after each pruning step and each qat=True quantization step (None: no fine-tuning; QAT then refused).
    calibration: batches for static int8 / SmoothQuant. progress(what, fraction) over the whole chain.
    """
    configs = [configs] if isinstance(configs, CompressionConfig) else list(configs)
    if not configs:
        raise ConfigError("compress() needs at least one config")
    verbs = [verb_of(c) for c in configs]
    train = _train_batches(data) if data is not None else None
    if finetune is not None and train is None:
        raise ConfigError("compress(finetune=...) needs data to fine-tune on")
    for c in configs:
        if getattr(c, "qat", False) and finetune is None:
            raise ConfigError(f"{type(c).__name__}(qat=True) trains with quantization in the loop: pass "
                              "finetune=TrainLoopConfig(...) and data")
    report_progress = progress or (lambda what, frac: None)
    n = len(configs)

    def part(i: int, lo: float, hi: float) -> Progress:  # step i's share of the whole bar, split in two
        return lambda what, frac: report_progress(what, (i + lo + (hi - lo) * frac) / n)

    # prepare: the dense reference (only when measuring), its facts before anything changes
    if measure is not None:  # a second copy of the weights: refused up front when it cannot fit (not OOM-killed)
        check_fits_ram(module_bytes(model), "the dense copy of the model kept to measure it beside the compressed one")
    dense = copy.deepcopy(model).eval() if measure is not None else None
    results, notes, skipped, codes = [], [], [], None
    for i, (cfg, verb) in enumerate(zip(configs, verbs)):
        # apply
        if verb == "prune":
            res = prune(model, cfg, example_inputs=example_inputs, data=train, progress=part(i, 0.0, 0.2))
        else:
            res = quantize(model, cfg, calibration=calibration, example_inputs=example_inputs,
                           progress=part(i, 0.0, 0.2))
        # fine-tune: after pruning (masks held), and QAT
        if finetune is not None and (verb == "prune" or getattr(cfg, "qat", False)):
            _finetune(model, train, finetune, res, part(i, 0.2, 1.0),
                      f"fine-tuning after {cfg.name} pruning" if verb == "prune" else f"QAT {cfg.name} {cfg.bits}-bit")
        # finalize: masks off (pruned weights stay exactly zero), QAT frozen to its codes
        if isinstance(res, PruneResult) and res.masks is not None:
            res.masks.detach()
            res.masks.apply()
        if getattr(cfg, "qat", False):
            res.codes = freeze(model)
        if isinstance(res, QuantResult) and res.codes is not None:
            codes = {**(codes or {}), **res.codes}
        results.append(res)
        notes += res.notes
        skipped += [(name, f"{cfg.name}: {why}") for name, why in res.skipped]
        report_progress(f"{verb} {cfg.name}: done", (i + 1) / n)
    model.eval()
    rep = CompressionReport(model, configs, results, results[-1].stored_bytes, codes, notes=notes, skipped=skipped)
    if measure is not None:
        _measure(rep, dense, example_inputs, data, measure)
    return rep


def _finetune(model, train, recipe, res, progress: Progress, what: str) -> None:
    from effml.train.classifier import train_classifier

    masks = getattr(res, "masks", None)
    train_classifier(model, train, recipe, step_hook=masks.apply if masks is not None else None,
                     progress=lambda msg, frac: progress(f"{what}: {msg}", frac), evaluate_after=False)


def _measure(rep: CompressionReport, dense: nn.Module, inputs: tuple | None, data, m: Measure) -> None:
    """Facts before/after (counted, accuracy on data.test), the predicted and the measured speed change."""
    from effml.compress.speed import SpeedCheck, predict_change
    from effml.measure.ab import compare

    if not inputs:
        raise ConfigError("compress(measure=...) needs example_inputs to count and time the model")
    test = getattr(data, "test", None)
    acc_before = acc_after = None
    if test is not None:
        from effml.train.classifier import evaluate

        acc_before, acc_after = evaluate(dense, test), evaluate(rep.model, test)
    rep.before = facts(dense, inputs, accuracy=acc_before, forward_kwargs=m.forward_kwargs)
    rep.after = facts(rep.model, inputs, stored_bytes=rep.stored_bytes, accuracy=acc_after,
                      forward_kwargs=m.forward_kwargs)
    change = speed_change(rep.configs)
    pred = meas = None
    note = ""
    if m.hw is not None:
        try:
            pred = predict_change(dense, inputs, change, after=rep.model if change == "channel" else None, hw=m.hw,
                                  forward_kwargs=m.forward_kwargs)
        except EffmlError as e:
            note = f"no prediction: {e}"
    if m.rounds:
        from effml.compress.on_device import check_config_on
        from effml.measure.device import for_timing, to_device

        for config in rep.configs:  # a CPU-only int8 model is refused on CUDA, never timed on the CPU instead
            check_config_on(config, m.device, "Measure.device")
        a, b, x = for_timing(dense, rep.model, tuple(inputs), m.device)
        meas = compare(a, b, x, forward_kwargs=to_device(m.forward_kwargs, m.device), rounds=m.rounds,
                       device=m.device)
    rep.speed = SpeedCheck(change, pred, meas, note)


def facts(model: nn.Module, inputs: tuple, *, stored_bytes: int | None = None, accuracy: float | None = None,
          forward_kwargs: dict | None = None) -> ModelFacts:
    """Count the model on `inputs` with effml.profile; parameters include packed int8 weights."""
    from effml.cost.counter import profile

    params = count_params(model)
    macs = flops = None
    note = ""
    try:
        prof = profile(model, *inputs, forward_kwargs=dict(forward_kwargs or {}))
        tot = prof.total()
        macs, flops = tot.macs, tot.flops
        params = max(params, prof.params)
        if prof.is_lower_bound:
            note = f"FLOPs are a lower bound: no formula for {', '.join(sorted(prof.unsupported))}"
    except Exception as e:  # noqa: BLE001 - the counter may meet kernels it does not know
        note = f"not counted: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    from effml.cost.tracking import packed_weights

    dense = param_bytes(model)
    unpacked = packed_weights(model)  # torch.ao int8 modules: quantized weights and float biases
    packed = [t for t in unpacked if t.is_quantized]
    biases = [t for t in unpacked if not t.is_quantized]
    n_packed = sum(w.numel() for w in packed) + sum(b.numel() for b in biases)
    params = max(params, count_params(model) + n_packed)
    nonzero = count_nonzero(model) + sum(int(torch.count_nonzero(w.int_repr() - _zero(w))) for w in packed) + \
        sum(int(torch.count_nonzero(b)) for b in biases)
    dense += n_packed * 4  # what these weights take at fp32
    return ModelFacts(params, nonzero, dense, stored_bytes if stored_bytes is not None else dense,
                      macs, flops, accuracy, note)


def _zero(w: torch.Tensor):
    if w.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
        shape = [1] * w.ndim
        shape[w.q_per_channel_axis()] = -1
        return w.q_per_channel_zero_points().reshape(shape)
    return w.q_zero_point()


def data_for(input_shape: tuple[int, ...], name: str, *, batch_size: int = 128, seed: int = 0,
             train_limit: int | None = None, test_limit: int | None = None):
    """A DataBundle resized to the model's H x W; the model must take 1-channel images (the data is grayscale)."""
    from effml.zoo.data import load

    if len(input_shape) != 4:
        raise ConfigError(f"--data gives images (B, 1, H, W) but the model's input has shape {tuple(input_shape)}")
    if input_shape[1] != 1:
        raise ConfigError(f"--data {name} is grayscale (1 channel) but the model takes {input_shape[1]} channels; "
                          "build it with in_channels=1 (e.g. a module:callable of your own)")
    if input_shape[-1] != input_shape[-2]:
        raise ConfigError(f"--data needs square inputs, the model takes {input_shape[-2]}x{input_shape[-1]}")
    return load(name, batch_size=batch_size, seed=seed, train_limit=train_limit, test_limit=test_limit,
                image_size=input_shape[-1])


def load_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a plain state dict (.safetensors, or a torch.save file read with weights_only=True) or an effml
    compressed checkpoint into `model`."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--weights {path}: no such file")
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            is_effml = "effml" in (f.metadata() or {})
        if is_effml:
            from effml.compress.io import load_compressed

            return load_compressed(path, model)
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ConfigError(f"--weights {path} does not fit the model: {str(e).splitlines()[0]}") from None
    return model


def save_state(model: nn.Module, path: str | Path) -> Path:
    """A plain float state dict as safetensors (tied tensors stored once by safetensors' save_model)."""
    from safetensors.torch import save_model

    save_model(model, str(path))
    return Path(path)
