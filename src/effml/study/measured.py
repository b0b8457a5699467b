"""What a study of the user's model measures for each variant, on the user's example inputs.

`Inputs.of(x)`: a tensor, a tuple of positional inputs or a dict of keyword inputs; `measure(model, baseline,
inputs, ...)`: counted cost (effml.profile), latency timed in alternating rounds with the baseline
(effml.measure.ab.beside), peak memory (resident weights + the allocator's peak during one forward) and
roofline predictions on catalog devices.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import nn

from effml.errors import EffmlError


@dataclass
class Inputs:
    """The example inputs as positional args and keyword args; `call(model)` runs the model on them."""

    args: tuple
    kwargs: dict

    @classmethod
    def of(cls, x) -> "Inputs":
        if isinstance(x, Mapping):
            return cls((), dict(x))
        if isinstance(x, (tuple, list)):
            return cls(tuple(x), {})
        return cls((x,), {})

    def call(self, model):
        return model(*self.args, **self.kwargs)

    def describe(self) -> str:
        def d(t):
            return f"Tensor{tuple(t.shape)} {str(t.dtype).replace('torch.', '')}" if isinstance(t, torch.Tensor) \
                else type(t).__name__
        parts = [d(a) for a in self.args] + [f"{k}={d(v)}" for k, v in self.kwargs.items()]
        return f"({', '.join(parts)})"

    @property
    def batch(self) -> int:
        first = next((t for t in (*self.args, *self.kwargs.values()) if isinstance(t, torch.Tensor)), None)
        return int(first.shape[0]) if first is not None and first.ndim else 1

    @property
    def device(self) -> str:
        first = next((t for t in (*self.args, *self.kwargs.values()) if isinstance(t, torch.Tensor)), None)
        return str(first.device) if first is not None else "cpu"


def resident_bytes(model: nn.Module) -> int:
    """Bytes of the model's distinct parameter/buffer storages plus weights packed inside int8 modules (not
    gradients a training loop left behind: inference does not need them)."""
    from effml.cost.tracking import packed_weights

    seen: dict[int, int] = {}
    for t in (*model.parameters(), *model.buffers()):
        st = t.untyped_storage()
        seen[st._cdata] = st.nbytes()
    return sum(seen.values()) + sum(t.numel() * t.element_size() for t in packed_weights(model))


def measure(model: nn.Module, baseline: nn.Module | None, inputs: Inputs, *, budget_s: float,
            devices: tuple[str, ...], decode: bool = False, backends: tuple[str, ...] = ("torch",)) -> dict:
    """Counted cost, latency beside the baseline, peak memory and per-device predictions of one variant.

    Peak memory = resident weights + the allocator's peak during one forward on the example inputs (CPU: the
    profiler's allocation events; CUDA: max_memory_allocated). The RSS high-water mark the default study
    records stays at 0 B for a model run after a larger one: the process already holds the pages.
    On CUDA inputs the rounds are timed with CUDA events and the GPU's name and capability are recorded;
    `backends` with "onnxruntime" adds the ORT metrics of effml.study.backends."""
    import functools

    from effml.hardware import predict
    from effml.measure.ab import beside
    from effml.train.measured import AllocatorPeak

    def bound(m):
        return functools.partial(m, **inputs.kwargs) if inputs.kwargs else m

    out: dict[str, Any] = {"batch": inputs.batch}
    prof = None
    try:
        import effml

        prof = effml.profile(model, *inputs.args, forward_kwargs=inputs.kwargs)
        tot = prof.total()
        out.update(params=prof.params, flops=tot.flops, macs=tot.macs, bytes_moved=tot.bytes,
                   lower_bound=prof.is_lower_bound)
    except Exception as e:  # noqa: BLE001 - the counter may meet kernels it cannot count; said, not zero
        out["count_note"] = f"not counted: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    m, speedup = beside(bound(model), bound(baseline) if baseline is not None else None, inputs.args,
                        budget_s=budget_s)
    out.update(latency_p50_s=m.p50, latency_p90_s=m.p90, throughput=m.throughput_per_s, speedup_measured=speedup,
               timing_rounds=len(m.times_s))
    with AllocatorPeak(inputs.device) as alloc, torch.inference_mode():
        inputs.call(model)
    resident = resident_bytes(model)
    out.update(resident_bytes=resident, activation_peak_bytes=alloc.peak_bytes,
               peak_mem_bytes=resident + alloc.peak_bytes)
    preds = {}
    if prof is not None:
        for spec in devices:
            name, _, dtype = spec.partition(":")
            try:
                p = predict(prof, name, dtype=dtype or None, batch=inputs.batch)
            except EffmlError as e:
                preds[name] = {"note": str(e)}
                continue
            preds[name] = {"latency_s": p.time_s, "energy_j": p.energy.total / inputs.batch,
                           "usd_per_1m": p.usd_per_1m, "fits": p.fits, "bound": p.bound, "dtype": p.dtype}
    out["predictions"] = preds
    from effml.study.on_device import recorded

    out.update(recorded(inputs.device))  # on CUDA: which GPU (name, compute capability) the numbers come from
    if "onnxruntime" in backends:  # the same variant exported and timed in ONNX Runtime (effml.study.backends)
        from effml.study.backends import ort_metrics

        out.update(ort_metrics(model, baseline, inputs.args, inputs.kwargs, budget_s=budget_s,
                               torch_p50_s=m.p50 * speedup))  # the baseline's p50 in the PyTorch window
    if decode:  # a causal LM: what its users feel is time to first token and decode tokens/s
        out.update(decode_speed(model, baseline, inputs, budget_s=budget_s))
    return out


def decode_speed(model: nn.Module, baseline: nn.Module | None, inputs: Inputs, *, new_tokens: int = 16,
                 budget_s: float = 2.0) -> dict:
    """Time to first token and greedy decode tokens/s of a transformers causal LM (`generate`) on the first row
    of the example input ids, timed in alternating rounds with the baseline: 1-token and `new_tokens`-token
    generations; decode rate = (new_tokens - 1) / (median time of the long one - median time of the short one)."""
    from effml.measure.ab import interleave, median

    ids = inputs.kwargs.get("input_ids", inputs.args[0] if inputs.args else None)
    if not isinstance(ids, torch.Tensor) or ids.ndim != 2 or ids.is_floating_point():
        return {"decode_note": "no (batch, tokens) input_ids among the example inputs: decode not timed"}
    ids = ids[:1]  # (1, T)

    def gen(m, n):
        return lambda: m.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                                  do_sample=False, pad_token_id=0)

    calls = {"first": gen(model, 1), "all": gen(model, new_tokens)}
    if baseline is not None:
        calls.update(base_first=gen(baseline, 1), base_all=gen(baseline, new_tokens))
    t = {k: median(v) for k, v in interleave(calls, rounds=50, warmup=1, budget_s=budget_s, min_rounds=3).items()}
    out = {"ttft_s": t["first"], "new_tokens": new_tokens}
    step = (t["all"] - t["first"]) / (new_tokens - 1)  # seconds per decoded token after the first
    out["decode_tok_s"] = 1.0 / step if step > 0 else None
    if baseline is not None:
        base_step = (t["base_all"] - t["base_first"]) / (new_tokens - 1)
        out["decode_speedup"] = base_step / step if step > 0 and base_step > 0 else None
    return out
