"""A short training run of a zoo model (tiny GPT on the KJV text, or a vision model on synthetic batches)
with the recipes switched on or off, reporting step time, throughput, peak memory and the loss curve.

    result = train(RunConfig(model="tiny_gpt", steps=30, seq=128), TrainConfig(precision="bf16-mixed"))
    result.step_time_s, result.tokens_per_s, result.measured.peak_bytes, result.losses

Under `torchrun` (see ddp.py) the same function runs data parallel: the model is wrapped in DDP, every
rank draws the same global batch and trains on its slice, so the gradients equal single-process training
on the whole global batch.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, field

import torch
import torch.distributed as dist

from effml.errors import ConfigError
from effml.guards import check_build_fits_ram, check_input_fits_ram
from effml.train import checkpoint as ckpt
from effml.train.config import TrainConfig
from effml.train.measured import MeasuredMemory, measure_step
from effml.train.recipes import Batch, TrainStep, check_precision, cpu_bf16_support


@dataclass(frozen=True)
class RunConfig:
    """What to train and for how long. `model_kwargs` go to the zoo builder (e.g. (("n_layer", 12),))."""

    model: str = "tiny_gpt"
    steps: int = 20
    warmup: int = 2  # steps not timed (the first creates the optimizer state)
    seq: int = 128  # token models: sequence length
    seed: int = 0
    model_kwargs: tuple = ()
    measure_memory: bool = True  # one extra step under the allocator tracker, plus the estimate
    threads: int | None = None
    device: str = "auto"  # 'auto': CUDA when present (fp16-mixed needs it), else CPU
    dump_grads: str | None = None  # save the first step's gradients here (rank 0), for the DDP check

    def __post_init__(self):
        from effml.models import model_builder

        if getattr(model_builder(self.model), "zoo_entry", None) is None:  # a zoo NAME or module:callable
            raise ConfigError(f"--model {self.model!r} has no zoo entry to say what data it trains on (text or "
                              "images, which shape): train a zoo model (e.g. tiny_gpt, lenet5) or register yours "
                              "with @effml.zoo.zoo_model")
        for name in ("steps", "seq"):
            if getattr(self, name) < 1:
                raise ConfigError(f"RunConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.warmup < self.steps:
            raise ConfigError(f"RunConfig.warmup must be in [0, steps), got {self.warmup} with steps={self.steps}")
        object.__setattr__(self, "model_kwargs", tuple(tuple(kv) for kv in self.model_kwargs))

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class TrainResult:
    model: str
    params: int
    config: TrainConfig
    run: RunConfig
    data: str
    losses: tuple[float, ...]
    step_times_s: tuple[float, ...]  # the timed steps (after warmup)
    samples_per_step: int  # global batch
    tokens_per_sample: int | None
    measured: MeasuredMemory | None = None
    estimated_peak_bytes: float | None = None
    precision_note: str = ""
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def step_time_s(self) -> float:
        return statistics.median(self.step_times_s) if self.step_times_s else float("nan")

    @property
    def samples_per_s(self) -> float:
        return self.samples_per_step / self.step_time_s

    @property
    def tokens_per_s(self) -> float | None:
        return self.samples_per_s * self.tokens_per_sample if self.tokens_per_sample else None

    @property
    def estimate_error(self) -> float | None:
        if self.measured is None or self.estimated_peak_bytes is None:
            return None
        return self.estimated_peak_bytes / self.measured.peak_bytes - 1

    def to_dict(self) -> dict:
        return {"model": self.model, "params": self.params, "config": self.config.to_dict(),
                "run": self.run.to_dict(), "data": self.data, "losses": list(self.losses),
                "step_times_s": list(self.step_times_s), "step_time_s": self.step_time_s,
                "samples_per_step": self.samples_per_step, "tokens_per_sample": self.tokens_per_sample,
                "samples_per_s": self.samples_per_s, "tokens_per_s": self.tokens_per_s,
                "measured": self.measured.to_dict() if self.measured else None,
                "estimated_peak_bytes": self.estimated_peak_bytes, "estimate_error": self.estimate_error,
                "precision_note": self.precision_note, "notes": list(self.notes)}

    @classmethod
    def from_dict(cls, d: dict) -> TrainResult:
        m = d.get("measured")
        measured = MeasuredMemory(**{k: v for k, v in m.items() if k != "peak_bytes"}) if m else None
        return cls(d["model"], d["params"], TrainConfig.from_dict(d["config"]), RunConfig(**d["run"]), d["data"],
                   tuple(d["losses"]), tuple(d["step_times_s"]), d["samples_per_step"], d["tokens_per_sample"],
                   measured, d["estimated_peak_bytes"], d["precision_note"], tuple(d["notes"]))


# ---- data: a registry keyed by the kind of model -------------------------------------------------------------
class TextData:
    """Character-level KJV windows (real text, effml.zoo.text): x (B, T) ids, y = x shifted by one."""

    label = "King James Bible, character level (real text)"

    def __init__(self, entry, run: RunConfig, global_batch: int):
        from effml.zoo.text import BatchSampler, kjv_corpus

        check_input_fits_ram((2 * global_batch, run.seq), 8, "--batch x --seq")  # x and y: (B, T) int64 each
        self.sampler = BatchSampler(kjv_corpus().train, global_batch, run.seq, seed=run.seed)
        self.tokens_per_sample = run.seq

    def __call__(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.sampler()  # (B, T), (B, T)


class ImageData:
    """Seeded synthetic batches: images N(0, 1) shaped like the zoo entry's input, labels uniform in
    [0, 10). For step time and memory only: no accuracy is claimed from them."""

    label = "synthetic images N(0,1) with random labels (timing and memory only)"
    tokens_per_sample = None

    def __init__(self, entry, run: RunConfig, global_batch: int):
        self.shape, self.batch, self.seed = entry.input_shape[1:], global_batch, run.seed
        check_input_fits_ram((global_batch, *self.shape), 4, "--batch")  # the batch built each step, fp32

    def __call__(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + step)
        return torch.randn((self.batch, *self.shape), generator=g), torch.randint(0, 10, (self.batch,), generator=g)


def _data_for(entry):
    return TextData if entry.vocab else ImageData


def build_model(run: RunConfig) -> tuple[torch.nn.Module, object]:
    from effml.models import model_builder

    build = model_builder(run.model)  # checks the constructor arguments, names the spec in any error
    entry = build.zoo_entry
    kwargs = dict(run.model_kwargs)
    if entry.vocab and "block_size" not in kwargs:
        kwargs["block_size"] = max(run.seq, 128)  # tiny_gpt's position table must cover seq
    check_build_fits_ram(build, kwargs, f"--model {run.model}")  # on meta first: weights that cannot fit refused
    torch.manual_seed(run.seed)
    model = build(**kwargs)
    if entry.vocab:
        from effml.zoo.gpt import init_gpt_weights

        init_gpt_weights(model, scale_residual=False)  # N(0, 0.02) everywhere, as effml train always did
    return model, entry


# ---- the loop -----------------------------------------------------------------------------------------------
def train(run: RunConfig, config: TrainConfig, progress=None) -> TrainResult:
    """Train run.steps optimizer steps; timing, memory and loss as in the module docstring. `progress(what,
    fraction)` (effml's one progress hook) is called after every step with the step and its loss."""
    if run.threads:
        torch.set_num_threads(run.threads)
    distributed = dist.is_available() and dist.is_initialized()
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    if world != config.world_size:
        raise ConfigError(f"TrainConfig.world_size={config.world_size} but {world} process(es) are running; "
                          "use effml train --nproc N (it sets both)")
    if config.zero_stage:
        raise ConfigError("effml train runs plain DDP (zero_stage 0); ZeRO stages are estimated by train-mem")
    device = _device(run.device, distributed)
    precision = check_precision(config.precision, device)
    model, entry = build_model(run)
    model.to(device).train()
    data = _data_for(entry)(entry, run, config.global_batch)
    ddp = None
    if distributed:
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        ddp = DistributedDataParallel(model, device_ids=ids, gradient_as_bucket_view=True)
    step = TrainStep(model, config, "auto", device.type, ddp=ddp)
    plan = ckpt.plan(model, config.checkpointing) if config.checkpointing.strategy != "budget" else None
    if plan is None:
        from effml.train.memory import train_memory

        x0, y0 = data(0)
        plan = train_memory(model, (x0[:config.micro_batch],), config, target=y0[:config.micro_batch]).checkpoint

    def micro_batches(i: int) -> list[Batch]:
        x, y = (t.to(device) for t in data(i))  # the global batch (B_global, ...): same on every rank
        mb = config.micro_batch
        base = rank * config.grad_accum * mb
        return [Batch((x[base + j * mb: base + (j + 1) * mb],), y[base + j * mb: base + (j + 1) * mb])
                for j in range(config.grad_accum)]

    losses, times, measured = [], [], None
    dump = _grad_dumper(model, run.dump_grads, rank)
    with ckpt.applied(model, plan):
        for i in range(run.steps):
            mbs = micro_batches(i)
            if run.measure_memory and i == run.warmup and not distributed:
                box: dict = {}
                measured = measure_step(lambda b=box, m=mbs: b.setdefault("loss", step.run(m)), model,
                                        step.optimizer, device)
                loss = box["loss"]
            else:
                t0 = time.perf_counter()
                loss = step.run(mbs, before_step=dump if i == 0 else None)
                if i >= run.warmup:
                    times.append(time.perf_counter() - t0)
            losses.append(_mean_over_ranks(loss, distributed))
            if progress is not None:
                progress(f"step {i + 1}/{run.steps}, loss {losses[-1]:.3f}", (i + 1) / run.steps)
    estimate, notes = None, []
    if run.measure_memory and not distributed:
        from effml.train.memory import train_memory

        x, y = micro_batches(0)[0].args[0].cpu(), micro_batches(0)[0].target.cpu()
        fresh, _ = build_model(run)
        estimate = train_memory(fresh, (x,), config, target=y, kernel_workspace=device.type == "cpu").peak
    if distributed:
        notes.append(f"DDP over {world} processes ({dist.get_backend()}); memory is not measured under DDP")
    return TrainResult(
        model=run.model, params=sum(p.numel() for p in model.parameters()), config=config, run=run, data=data.label,
        losses=tuple(losses), step_times_s=tuple(times), samples_per_step=config.global_batch,
        tokens_per_sample=data.tokens_per_sample, measured=measured, estimated_peak_bytes=estimate,
        precision_note=_precision_note(precision) if device.type == "cpu" else "", notes=tuple(notes))


def _device(name: str, distributed: bool) -> torch.device:
    """'auto' -> cuda (this rank's GPU under torchrun) when available, else cpu."""
    import os

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) if distributed else 0)
        torch.cuda.set_device(device)
    return device


def _mean_over_ranks(loss: float, distributed: bool) -> float:
    if not distributed:
        return float(loss)
    t = torch.tensor([float(loss)], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t) / dist.get_world_size()


def _grad_dumper(model, path: str | None, rank: int):
    if not path:
        return None

    def dump():
        if rank == 0:
            torch.save({n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}, path)
    return dump


def _precision_note(precision) -> str:
    if precision.compute_dtype != "bf16":
        return ""
    hw = cpu_bf16_support()
    if hw["bf16_hardware"]:
        return f"this CPU ({hw['capability']}) has bf16 arithmetic (AVX512-BF16: {hw['avx512_bf16']}, AMX: {hw['amx_bf16']})"
    return (f"this CPU ({hw['capability']}) has no bf16 arithmetic (no AVX512-BF16, no AMX): bf16 is emulated "
            "through fp32 conversions and runs slower than fp32 here")


__all__ = ["ImageData", "RunConfig", "TextData", "TrainResult", "build_model", "train"]
