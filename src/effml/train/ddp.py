"""Data-parallel training with PyTorch DDP, launched by torchrun: `launch(run, config, nproc=2)`.

The launcher writes the run to a JSON file and starts
    python -m torch.distributed.run --standalone --nproc-per-node N -m effml.train.ddp SPEC.json OUT.json
Each worker joins the process group (gloo on CPU, NCCL on GPUs), runs `loop.train` (which wraps the model
in DDP and trains each rank on its slice of the same global batch) and rank 0 writes the result.
`--standalone` makes torchrun pick a free local port, so nothing outside the machine is touched.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from effml.errors import ConfigError, EffmlError
from effml.train.config import TrainConfig
from effml.train.loop import RunConfig, TrainResult


class LaunchError(EffmlError, RuntimeError):
    """torchrun or a worker failed."""


def torchrun_command(spec_path: str, out_path: str, nproc: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
            "-m", "effml.train.ddp", spec_path, out_path]


def launch(run: RunConfig, config: TrainConfig, nproc: int, timeout_s: float = 900) -> TrainResult:
    """Train with `nproc` DDP processes on this machine; the result as rank 0 saw it (losses averaged
    over ranks). config.world_size is set to nproc; its micro_batch stays per process."""
    if isinstance(nproc, bool) or not isinstance(nproc, int) or nproc < 1:
        raise ConfigError(f"nproc (world size) must be an integer >= 1, got {nproc!r}")
    config = config.replace(world_size=nproc)
    with tempfile.TemporaryDirectory(prefix="effml-ddp-") as tmp:
        spec, out = Path(tmp) / "spec.json", Path(tmp) / "result.json"
        spec.write_text(json.dumps({"run": run.to_dict(), "config": config.to_dict()}))
        env = dict(os.environ)
        threads = run.threads or max(1, (os.cpu_count() or 1) // nproc)
        env.setdefault("OMP_NUM_THREADS", str(threads))  # torchrun would otherwise force 1
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(Path(__file__).resolve().parents[2]),
                                                        env.get("PYTHONPATH", "")) if p)
        try:
            proc = subprocess.run(torchrun_command(str(spec), str(out), nproc), capture_output=True, text=True,
                                  timeout=timeout_s, env=env, check=False)
        except subprocess.TimeoutExpired:
            raise LaunchError(f"torchrun with {nproc} processes did not finish in {timeout_s:.0f} s") from None
        if proc.returncode != 0 or not out.exists():
            lines = [ln.strip() for ln in (proc.stderr or "").splitlines() if ln.strip() and "USDT" not in ln]
            # torchrun ends with its own summary (which rank, which signal); the cause is what a worker wrote
            # before it: its exception or the C++ runtime's abort message
            cause = [ln for ln in lines if any(k in ln for k in ("Error", "error:", "terminate called", "what()"))]
            tail = list(dict.fromkeys(cause[-3:] + lines[-3:]))
            raise LaunchError(f"torchrun with {nproc} processes failed (exit {proc.returncode}): " + " | ".join(tail))
        return TrainResult.from_dict(json.loads(out.read_text()))


def worker(spec_path: str, out_path: str) -> int:
    """One torchrun worker: join the group, train, rank 0 writes the result."""
    import torch
    import torch.distributed as dist

    from effml.train.loop import train

    spec = json.loads(Path(spec_path).read_text())
    run, config = RunConfig(**spec["run"]), TrainConfig.from_dict(spec["config"])
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend)
    try:
        result = train(run, config)
        if dist.get_rank() == 0:
            Path(out_path).write_text(json.dumps(result.to_dict()))
        dist.barrier()
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(worker(*sys.argv[1:3]))


__all__ = ["LaunchError", "launch", "torchrun_command", "worker"]
