"""ONNX Runtime as a measured backend: export a model with `torch.onnx.export`, run it in ORT (fp32, and ORT's
own dynamic int8 from `onnxruntime.quantization.quantize_dynamic`), and time it beside PyTorch in one process.

    cmp = compare_backends(model, (ids,), name="bert-base", variants={"effml int8": q})
    cmp.rows          # pytorch fp32, effml int8, ort fp32, ort int8: p50, speedup vs fp32, cosine, max |error|

The exporter is the TorchScript one (`dynamo=False`): on torch 2.13 it needs only the `onnx` package, while the
dynamo exporter needs `onnxscript`. Each model is exported for the exact input shapes it is timed on (no
dynamic axes: the trace of a transformer can bake in shape-dependent branches), so one export per shape.
ORT runs with `threads` intra-op threads (default 1), one inter-op thread, sequential execution, every graph
optimisation and no spinning (session.intra_op.allow_spinning 0); PyTorch runs with the same number of threads
during the comparison. Outputs are compared with PyTorch fp32's on the same inputs: cosine similarity and max
absolute error of the first output tensor (logits or hidden states).

`time_beside_torch` is the one timer of PyTorch vs ORT (the study's ORT metrics, compare_backends, `effml bench
--backend onnxruntime`): both sides warmed up, then called in turn (torch, ORT, torch, ORT, ...) in one window of
at least MIN_ROUNDS rounds. Why no spinning: ORT's idle workers otherwise busy-wait after each run and hold the
cores that the PyTorch call timed next needs. Measured with `effml study --spec --backend onnxruntime` on a 2-core
machine (MLP 16-1024-1024-4, batch 32, 2 threads each), spinning the only change: the PyTorch baseline's p50 in
the window was 8-23 ms with ORT spinning (0.9-1.8 ms back to back), so ORT fp32 read 6.8-28x faster, and 1.1-1.7
ms without it, ORT fp32 1.6-2.0x faster (3 runs each). `disturbed_note` says when a window was still disturbed.
A variant that fails to export or quantize is kept as a row with its error; the others still run.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from effml.errors import ConfigError, EffmlError
from effml.extras import require
from effml.progress import Progress

# ORT fp32; ORT dynamic int8 (quantize_dynamic's default: int8 weights per tensor, activations at run time); the
# same with per-output-channel weight scales
ORT_VARIANTS = ("fp32", "int8", "int8-per-channel")


class OnnxExportError(EffmlError, RuntimeError):
    """A model could not be exported to ONNX or quantized by ORT (the message names the model and the cause)."""


@dataclass(frozen=True)
class OrtConfig:
    threads: int = 1  # ORT intra-op threads, and torch's threads while the backends are compared
    opset: int = 17
    variants: tuple[str, ...] = ("fp32", "int8")  # a subset of ORT_VARIANTS

    def __post_init__(self):
        if isinstance(self.threads, bool) or not isinstance(self.threads, int) or self.threads < 1:
            raise ConfigError(f"OrtConfig.threads must be a positive integer, got {self.threads!r}")
        if isinstance(self.opset, bool) or not isinstance(self.opset, int) or not 13 <= self.opset <= 20:
            raise ConfigError(f"OrtConfig.opset must be an integer in 13..20 (the TorchScript exporter's range), "
                              f"got {self.opset!r}")
        bad = [v for v in self.variants if v not in ORT_VARIANTS]
        if bad or not self.variants:
            raise ConfigError(f"OrtConfig.variants {self.variants!r}: each must be one of {', '.join(ORT_VARIANTS)}")


def first_tensor(out) -> torch.Tensor:
    """The output compared and returned by the ONNX graph: a tensor itself, else logits / last_hidden_state
    (transformers outputs), else the first tensor in a tuple/dict."""
    if isinstance(out, torch.Tensor):
        return out
    for key in ("logits", "last_hidden_state"):
        v = out.get(key) if isinstance(out, dict) else getattr(out, key, None)
        if isinstance(v, torch.Tensor):
            return v
    values = out.values() if isinstance(out, dict) else out if isinstance(out, (tuple, list)) else ()
    for v in values:
        if isinstance(v, torch.Tensor):
            return v
    raise OnnxExportError(f"the model returned {type(out).__name__}, which holds no tensor to export")


class _Forward(nn.Module):
    """model(*args, **kwargs) -> its first output tensor; tensors become graph inputs, other kwargs constants."""

    def __init__(self, model: nn.Module, n_args: int, tensor_kwargs: list[str], const_kwargs: dict):
        super().__init__()
        self.model, self.n_args, self.tensor_kwargs, self.const_kwargs = model, n_args, tensor_kwargs, const_kwargs

    def forward(self, *tensors):
        kw = dict(zip(self.tensor_kwargs, tensors[self.n_args:])) | self.const_kwargs
        return first_tensor(self.model(*tensors[:self.n_args], **kw))


def _graph_inputs(args: tuple, kwargs: dict) -> tuple[list[str], tuple, list[str], dict]:
    if not all(isinstance(a, torch.Tensor) for a in args):
        raise OnnxExportError("ONNX export needs tensor positional inputs; pass other values as keyword arguments")
    tkw = [k for k, v in kwargs.items() if isinstance(v, torch.Tensor)]
    const = {k: v for k, v in kwargs.items() if k not in tkw}
    names = [f"input_{i}" for i in range(len(args))] + tkw
    return names, tuple(args) + tuple(kwargs[k] for k in tkw), tkw, const


def export(model: nn.Module, args: tuple, path: str | Path, *, kwargs: dict | None = None, opset: int = 17,
           name: str = "model") -> list[str]:
    """Export model(*args, **kwargs) for exactly these input shapes; returns the graph's input names."""
    require("onnx", extra="onnx", what="exporting to ONNX")
    names, tensors, tkw, const = _graph_inputs(tuple(args), dict(kwargs or {}))
    if "use_cache" in const:
        const["use_cache"] = False  # a KV cache is not an output of the exported graph
    wrapper = _Forward(model, len(args), tkw, const).eval()
    try:
        with warnings.catch_warnings(), torch.no_grad(), _stdout_to_devnull():
            warnings.simplefilter("ignore")  # the legacy exporter's deprecation and tracer warnings
            torch.onnx.export(wrapper, tensors, str(path), dynamo=False, opset_version=opset, input_names=names,
                              output_names=["output"], do_constant_folding=True)
    except Exception as e:  # the exporter raises many types (TypeError, RuntimeError, UnsupportedOperatorError)
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise OnnxExportError(f"exporting {name} to ONNX failed: {type(e).__name__}: {first}") from e
    return names


@contextlib.contextmanager
def _stdout_to_devnull():
    """File descriptor 1 to /dev/null: on failure the TorchScript exporter writes the whole IR graph to stdout
    from C++ (`_jit_onnx_log`), which would break `--json` output; the error itself is raised, not printed."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
            yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def quantize_int8(src: str | Path, dst: str | Path, *, per_channel: bool = False, name: str = "model") -> Path:
    """ORT's dynamic int8 (int8 weights, activations quantized at run time) of an exported fp32 model."""
    q = require("onnxruntime.quantization", extra="onnx", what="ORT int8 quantization")
    logging.disable(logging.WARNING)  # its root-logger advice to run pre-processing first, on every call
    try:
        q.quantize_dynamic(str(src), str(dst), weight_type=q.QuantType.QInt8, per_channel=per_channel)
    except Exception as e:
        raise OnnxExportError(f"ORT int8 quantization of {name} failed: {type(e).__name__}: {e}") from e
    finally:
        logging.disable(logging.NOTSET)
    return Path(dst)


class OrtRunner:
    """An ORT CPU session over an .onnx file: runner(*tensors) -> the first output as a torch tensor."""

    def __init__(self, path: str | Path, input_names: list[str], threads: int = 1, spinning: bool = False):
        ort = require("onnxruntime", extra="onnx")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        # idle workers sleep between runs instead of busy-waiting on the cores PyTorch is timed on next
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        opts.add_session_config_entry("session.inter_op.allow_spinning", "1" if spinning else "0")
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.path, self.input_names, self.threads = Path(path), list(input_names), threads
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

    def feed(self, tensors: tuple) -> dict:
        return {n: t.detach().cpu().numpy() for n, t in zip(self.input_names, tensors)}

    def run(self, feed: dict):
        return self.session.run(None, feed)[0]

    def __call__(self, *tensors) -> torch.Tensor:
        return torch.from_numpy(self.run(self.feed(tensors)))


# the PyTorch-vs-ORT window: rounds of warm-up (ORT's first runs allocate and plan), at least MIN_ROUNDS timed
# rounds, however short the budget; a callable's p50 over DISTURBED x its reference: the window was disturbed
WARMUP_ROUNDS, MIN_ROUNDS, DISTURBED = 5, 20, 3.0


def time_beside_torch(calls: dict[str, Callable[[], object]], *, threads: int, budget_s: float,
                      rounds: int = 10_000, min_rounds: int = MIN_ROUNDS, warmup: int = WARMUP_ROUNDS
                      ) -> dict[str, list[float]]:
    """Seconds per call of PyTorch and ORT callables timed in turn (torch, ort, torch, ort, ...; effml.measure.ab
    .interleave) after `warmup` untimed rounds, for `rounds` rounds or `budget_s` seconds, never fewer than
    `min_rounds`; torch runs with `threads` threads in the window (the ORT sessions' intra-op count, OrtRunner)."""
    from effml.measure.ab import interleave

    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ConfigError(f"time_beside_torch threads must be a positive integer, got {threads!r}")
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return interleave(calls, rounds=max(rounds, min_rounds), warmup=warmup, budget_s=budget_s,
                          min_rounds=min_rounds)
    finally:
        torch.set_num_threads(before)


def disturbed_note(times: dict[str, list[float]], threads: int, reference: tuple[str, float] | None = None
                   ) -> str | None:
    """Why a window's ratios are not the runtimes' own, or None: a callable's p50 there over DISTURBED x its
    fastest tenth of calls there, or (`reference` = (key, seconds)) that callable's p50 over DISTURBED x its p50
    measured elsewhere (back to back). The cause measured: torch threads >= 2 on a busy CPU, whose OpenMP workers
    sleep while ORT runs and then wait for a core on each parallel op (see effml.study.backends)."""
    from effml.measure.ab import median

    for key, xs in times.items():
        if not xs:
            continue
        p50, p10 = median(xs), sorted(xs)[len(xs) // 10]  # p10: the fastest tenth's upper end (>= 10 rounds)
        refs = [("its fastest tenth of calls there", p10)]
        if reference is not None and reference[0] == key and reference[1]:
            refs.insert(0, ("its p50 back to back, without the other runtime", reference[1]))
        for what, ref in refs:
            if p50 > DISTURBED * ref:
                return (f"{key}: p50 in the window ({1e3 * p50:.3g} ms) is {p50 / ref:.1f}x {what} "
                        f"({1e3 * ref:.3g} ms): its {threads} thread(s) waited for the CPU, so the window's ratios "
                        f"are off; rerun on an idle machine or with 1 thread")
    return None


def agreement(ref: torch.Tensor, out: torch.Tensor) -> dict:
    """Cosine similarity (flattened, float64) and max absolute error of `out` against `ref`."""
    if tuple(ref.shape) != tuple(out.shape):
        raise OnnxExportError(f"output shape {tuple(out.shape)} differs from PyTorch's {tuple(ref.shape)}")
    a, b = ref.detach().double().flatten(), out.detach().double().flatten()
    cos = float(torch.nn.functional.cosine_similarity(a, b, dim=0))
    return {"cosine": cos, "max_abs_err": float((a - b).abs().max()), "ref_max_abs": float(a.abs().max())}


@dataclass
class BackendRow:
    variant: str  # "pytorch fp32", "effml int8", "ort fp32", "ort int8"
    backend: str  # "pytorch" | "onnxruntime"
    times_s: list[float] = field(default_factory=list)
    cosine: float | None = None
    max_abs_err: float | None = None
    size_bytes: int | None = None  # the .onnx file (ORT rows)
    error: str | None = None  # why the variant did not run (export or quantization failure)

    @property
    def p50_s(self) -> float | None:
        from effml.measure.timing import percentile

        return percentile(sorted(self.times_s), 50) if self.times_s else None


@dataclass
class BackendComparison:
    """PyTorch and ORT variants of one model on one input, timed interleaved in one process."""

    model: str
    input_shapes: list[list[int]]
    rows: list[BackendRow]
    threads: int
    cpu_capability: str
    versions: dict
    rounds: int
    note: str | None = None  # disturbed_note of the timing window: its ratios are not the runtimes' own

    def speedup(self, row: BackendRow) -> float | None:
        ref = self.rows[0].p50_s
        return ref / row.p50_s if ref and row.p50_s else None

    def to_dict(self) -> dict:
        rows = [{"variant": r.variant, "backend": r.backend, "p50_s": r.p50_s, "speedup_vs_fp32": self.speedup(r),
                 "cosine": r.cosine, "max_abs_err": r.max_abs_err, "size_bytes": r.size_bytes,
                 "repeats": len(r.times_s), "error": r.error} for r in self.rows]
        return {"model": self.model, "input_shapes": self.input_shapes, "threads": self.threads,
                "cpu_capability": self.cpu_capability, "versions": self.versions, "rounds": self.rounds,
                "reference": self.rows[0].variant, "rows": rows, "note": self.note}


def compare_backends(model: nn.Module, args: tuple, *, kwargs: dict | None = None, name: str = "model",
                     variants: dict[str, nn.Module] | None = None, config: OrtConfig | None = None,
                     rounds: int = 15, budget_s: float = 30.0, workdir: str | Path | None = None,
                     reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
                     progress: Progress | None = None) -> BackendComparison:
    """PyTorch fp32 (the reference), the given PyTorch `variants` (e.g. effml int8) and ORT fp32/int8 of `model`
    on the same inputs: medians from interleaved rounds, outputs against the reference's. `reduce` maps each
    output before comparing (e.g. mean pooling to a sentence embedding); default: the output itself."""
    ort = require("onnxruntime", extra="onnx")
    config = config or OrtConfig()
    progress = progress or (lambda what, frac: None)
    kwargs = dict(kwargs or {})
    args = tuple(args)
    threads_before = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        reduce = reduce or (lambda t: t)
        with torch.inference_mode():
            ref = reduce(first_tensor(model(*args, **kwargs)))
        rows = [BackendRow("pytorch fp32", "pytorch", cosine=1.0, max_abs_err=0.0)]  # the reference itself
        calls: dict[str, Callable] = {rows[0].variant: lambda: model(*args, **kwargs)}
        for label, m in (variants or {}).items():
            with torch.inference_mode():
                rows.append(BackendRow(label, "pytorch", **_agree(ref, reduce(first_tensor(m(*args, **kwargs))))))
            calls[label] = lambda m=m: m(*args, **kwargs)
        with tempfile.TemporaryDirectory(prefix="effml-onnx-", dir=workdir) as tmp:
            progress(f"exporting {name} to ONNX", 0.1)
            rows += _ort_rows(model, args, kwargs, name, config, Path(tmp), ref, reduce, calls, progress)
            progress(f"timing {len(calls)} variants", 0.5)
            times = time_beside_torch(calls, threads=config.threads, rounds=rounds, budget_s=budget_s,
                                      min_rounds=min(rounds, MIN_ROUNDS))
    finally:
        torch.set_num_threads(threads_before)
    for r in rows:
        r.times_s = times.get(r.variant, [])
    progress("done", 1.0)
    shapes = [list(t.shape) for t in args] + [list(v.shape) for v in kwargs.values() if isinstance(v, torch.Tensor)]
    return BackendComparison(name, shapes, rows, config.threads, torch.backends.cpu.get_cpu_capability(),
                             {"torch": torch.__version__, "onnxruntime": ort.__version__},
                             max((len(t) for t in times.values()), default=0),
                             disturbed_note(times, config.threads))


def _agree(ref, out) -> dict:
    a = agreement(ref, out)
    return {"cosine": a["cosine"], "max_abs_err": a["max_abs_err"]}


def _ort_rows(model, args, kwargs, name, config: OrtConfig, tmp: Path, ref, reduce, calls: dict, progress
              ) -> list[BackendRow]:
    rows: list[BackendRow] = []
    fp32 = tmp / "model.onnx"
    t0 = time.perf_counter()
    try:
        names = export(model, args, fp32, kwargs=kwargs, opset=config.opset, name=name)
    except OnnxExportError as e:
        return [BackendRow(f"ort {v}", "onnxruntime", error=str(e)) for v in config.variants]
    graph_inputs = _graph_inputs(args, kwargs)[1]
    progress(f"exported in {time.perf_counter() - t0:.0f} s", 0.3)
    for v in config.variants:
        label = f"ort {v.replace('-', ' ')}"
        try:
            path = fp32 if v == "fp32" else quantize_int8(fp32, tmp / f"model.{v}.onnx",
                                                          per_channel=v == "int8-per-channel", name=name)
            runner = OrtRunner(path, names, config.threads)
            feed = runner.feed(graph_inputs)
            out = reduce(torch.from_numpy(runner.run(feed)))
            rows.append(BackendRow(label, "onnxruntime", size_bytes=path.stat().st_size, **_agree(ref, out)))
            calls[label] = lambda r=runner, f=feed: r.run(f)
        except EffmlError as e:
            rows.append(BackendRow(label, "onnxruntime", error=str(e)))
        except Exception as e:  # ORT refusing the graph at session creation: the variant is listed with it
            rows.append(BackendRow(label, "onnxruntime", error=f"onnxruntime: {type(e).__name__}: {e}"))
    return rows


__all__ = ["BackendComparison", "BackendRow", "DISTURBED", "MIN_ROUNDS", "ORT_VARIANTS", "OnnxExportError",
           "OrtConfig", "OrtRunner", "WARMUP_ROUNDS", "agreement", "compare_backends", "disturbed_note", "export",
           "first_tensor", "quantize_int8", "time_beside_torch"]
