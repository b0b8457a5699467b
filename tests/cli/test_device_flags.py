"""`--device` of effml prune, quantize, generate and serve-bench: one error line where there is no GPU, the
GPU really used (and named in --json) where there is one, CPU-only formats refused there."""

import json

import pytest
import torch

from effml.cli import main

COMMANDS = {
    "prune": ["prune", "--model", "effml.zoo:mlp", "--sparsity", "0.5"],
    "quantize": ["quantize", "--model", "effml.zoo:mlp", "--method", "linear"],
    "generate": ["generate", "--model", "tiny", "--prompt", "hi", "--max-new-tokens", "4", "--ignore-eos"],
    "serve-bench": ["serve-bench", "--model", "tiny", "--requests", "2"],
}


def _cuda() -> str:
    if not torch.cuda.is_available():
        pytest.skip(f"no CUDA device: torch {torch.__version__} sees no GPU (torch.cuda.is_available() is False)")
    return "cuda:0"


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is visible: the no-GPU error cannot occur")
@pytest.mark.parametrize("command", list(COMMANDS))
def test_no_gpu_is_one_error_line(command, capsys):
    assert main([*COMMANDS[command], "--device", "cuda"]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err == (f"effml {command}: error: --device cuda: no CUDA GPU is visible to torch here (torch "
                   f"{torch.__version__}, a CPU-only build); use --device cpu, or run on a machine with a GPU and a "
                   "CUDA build of torch")
    assert captured.out == ""  # refused before any work: nothing generated, measured or printed


@pytest.mark.parametrize("command", list(COMMANDS))
def test_device_typo(command, capsys):
    assert main([*COMMANDS[command], "--device", "cuda:x"]) == 2
    assert "--device 'cuda:x' is not a device: use cpu, cuda or cuda:N" in capsys.readouterr().err


def test_prune_speed_check_on_the_gpu(capsys):
    _cuda()
    assert main([*COMMANDS["prune"], "--device", "cuda", "--rounds", "5", "--json"]) == 0
    measured = json.loads(capsys.readouterr().out)["speed"]["measured"]
    assert measured["device"] == "cuda:0" and measured["device_name"] == torch.cuda.get_device_name(0)
    assert measured["rounds"] == 5


def test_quantize_cpu_only_format_refused_on_the_gpu(capsys):
    _cuda()
    assert main(["quantize", "--model", "effml.zoo:mlp", "--method", "int8-dynamic", "--device", "cuda"]) == 2
    assert "--device cuda:0: int8-dynamic: torch.ao quantized int8 kernels" in capsys.readouterr().err


def test_generate_and_serve_on_the_gpu(capsys):
    _cuda()
    name = torch.cuda.get_device_name(0)
    assert main([*COMMANDS["generate"], "--device", "cuda", "--temperature", "0.8", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["device"]["name"] == name and len(d["result"]["tokens"]) == 4  # --max-new-tokens 4, no EOS stop
    assert d["roofline"] is None  # the bound would be this CPU's bandwidth, not the GPU's
    assert main([*COMMANDS["serve-bench"], "--device", "cuda", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["device"]["name"] == name and d["results"]["static"]["requests"] == 2
    assert main([*COMMANDS["generate"], "--device", "cuda", "--format", "int4"]) == 2
    assert "--format int4 is not available on the GPU (weight-only: the packed" in capsys.readouterr().err
