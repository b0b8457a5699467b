"""Any Llama-family checkpoint into effml's decoder: a local Hugging Face directory or an in-memory transformers model.

    model, tok = load_checkpoint("path/to/dir")     # config.json + *.safetensors (+ tokenizer files, optional)
    lm = load_checkpoint_llm("path/to/dir")          # LoadedModel for `effml generate --model PATH`
    model = from_transformers(hf_model)              # Llama / Qwen2 / Qwen3 / Mistral / Phi-3 ...ForCausalLM

Supported: Llama (SmolLM, TinyLlama, Llama 2, Llama 3 / 3.1 / 3.2 with their `llama3` RoPE scaling, `linear` RoPE
scaling), Qwen2 (biased q/k/v), Qwen3 (per-head q/k RMSNorm, heads wider than hidden_size / heads) and Mistral
(within its sliding window: the context is capped at it), Phi-3 (fused qkv_proj and gate_up_proj, split on load;
context capped at its sliding window too); an explicit `head_dim` in any of them. Refused by name: other
architectures (GPT-2, BERT, Qwen3-MoE, ...), other RoPE scalings (yarn, dynamic, longrope: Phi-3's 128k
variants), RoPE on part of a head (partial_rotary_factor < 1), activations other than SiLU, and MLP or
output-projection biases. Weights are read with safetensors (no pickle); `pytorch_model.bin`
is not loaded.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from effml.errors import ConfigError, ModelError
from effml.llm.model import ModelArgs, Transformer, no_init
from effml.llm.rope import ROPE_SCALINGS, RopeScaling

ARCHITECTURES = {"LlamaForCausalLM": "llama", "Qwen2ForCausalLM": "qwen2", "Qwen3ForCausalLM": "qwen3",
                 "MistralForCausalLM": "mistral", "Phi3ForCausalLM": "phi3"}
WINDOWED = ("MistralForCausalLM", "Phi3ForCausalLM")  # a `sliding_window` in their config applies to every layer


def _architecture(cfg: dict, where: str) -> str:
    archs = cfg.get("architectures") or []
    by_type = {v: k for k, v in ARCHITECTURES.items()}
    arch = archs[0] if archs else by_type.get(cfg.get("model_type"), cfg.get("model_type") or "unknown")
    if arch not in ARCHITECTURES:
        raise ConfigError(f"{where}: architecture {arch!r} is not supported by effml's decoder; supported: "
                          f"{', '.join(ARCHITECTURES)} (for others use transformers' own generate)")
    return arch


def args_from_config(config: dict, where: str = "checkpoint") -> ModelArgs:
    """ModelArgs for a Llama/Qwen2/Mistral config.json; refuses what the decoder would compute differently."""
    arch = _architecture(config, where)
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    scaling = None
    if rope_type not in (None, "default"):
        if rope_type not in ROPE_SCALINGS:
            raise ConfigError(f"{where}: RoPE scaling {rope_type!r} is not implemented in effml's decoder "
                              f"(implemented: {', '.join(ROPE_SCALINGS)})")
        if "factor" not in rope:
            raise ConfigError(f"{where}: rope_scaling {rope_type!r} has no 'factor'")
        extra = {k: rope[k] for k in ("low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
                 if rope_type == "llama3" and k in rope}
        scaling = RopeScaling(rope_type, float(rope["factor"]), **extra)
    partial = rope.get("partial_rotary_factor", config.get("partial_rotary_factor", 1.0))
    if partial not in (None, 1, 1.0):
        raise ConfigError(f"{where}: partial_rotary_factor={partial} (RoPE on part of each head) is not supported")
    if config.get("hidden_act", "silu") != "silu":
        raise ConfigError(f"{where}: activation {config.get('hidden_act')!r} is not supported (SwiGLU with SiLU only)")
    if config.get("mlp_bias"):
        raise ConfigError(f"{where}: MLP biases (mlp_bias=true) are not supported")
    if arch in ("LlamaForCausalLM", "Qwen3ForCausalLM") and config.get("attention_bias"):
        raise ConfigError(f"{where}: attention_bias=true (an o_proj bias) is not supported")
    heads, dim = config["num_attention_heads"], config["hidden_size"]
    hd = config.get("head_dim") or dim // heads
    ctx = config.get("max_position_embeddings", 2048)
    windowed = arch in WINDOWED or config.get("use_sliding_window")
    window = config.get("sliding_window") if windowed else None
    ctx = min(ctx, window) if window else ctx  # inside the window, sliding-window attention is full attention
    theta = rope.get("rope_theta", config.get("rope_theta") or 10000.0)
    return ModelArgs(dim=dim, n_layers=config["num_hidden_layers"], n_heads=heads,
                     n_kv_heads=config.get("num_key_value_heads") or heads, vocab_size=config["vocab_size"],
                     hidden_dim=config["intermediate_size"], norm_eps=float(config.get("rms_norm_eps", 1e-6)),
                     rope_theta=float(theta), max_seq_len=ctx,
                     tie_embeddings=bool(config.get("tie_word_embeddings", False)),
                     qkv_bias=arch == "Qwen2ForCausalLM", rope_scaling=scaling,
                     head_size=0 if heads * hd == dim else hd, qk_norm=arch == "Qwen3ForCausalLM")


def _hf_to_ours(name: str, where: str) -> str | None:
    from effml.llm.weights import hf_to_ours

    if name.endswith("rotary_emb.inv_freq"):
        return None  # recomputed from rope_theta
    try:
        return hf_to_ours(name)
    except ModelError:
        raise ModelError(f"{where}: unexpected parameter {name!r} for a Llama-family decoder") from None


def _split_fused(state: dict[str, torch.Tensor], args: ModelArgs) -> dict[str, torch.Tensor]:
    """Phi-3's fused projections as Llama's: qkv_proj rows [q | k | v] and gate_up_proj rows [gate | up]."""
    q, kv = args.n_heads * args.head_dim, args.n_kv_heads * args.head_dim
    fused = {"self_attn.qkv_proj.weight": (("q_proj", "k_proj", "v_proj"), [q, kv, kv]),
             "mlp.gate_up_proj.weight": (("gate_proj", "up_proj"), [args.hidden_dim] * 2)}
    out = {}
    for k, v in state.items():
        suffix = next((f for f in fused if k.endswith(f)), None)
        if suffix is None:
            out[k] = v
            continue
        names, rows = fused[suffix]
        if v.shape[0] != sum(rows):
            raise ModelError(f"{k}: {v.shape[0]} rows, but the config's shapes make {' + '.join(map(str, rows))}")
        base = k[:-len(suffix)] + suffix.split(".")[0] + "."
        out.update({base + n + ".weight": part for n, part in zip(names, v.split(rows))})
    return out


def from_state_dict(config: dict, state: dict[str, torch.Tensor], where: str = "checkpoint",
                    dtype: torch.dtype = torch.float32) -> Transformer:
    args = args_from_config(config, where)
    ours = {}
    for k, v in _split_fused(state, args).items():
        n = _hf_to_ours(k, where)
        if n is not None:
            ours[n] = v.to(dtype)
    if args.tie_embeddings:
        ours.pop("output.weight", None)
    with no_init():
        model = Transformer(args)
    missing, unexpected = model.load_state_dict(ours, strict=False)
    missing = [m for m in missing if not (args.tie_embeddings and m == "output.weight")]
    if missing or unexpected:
        raise ModelError(f"{where}: weights do not match the config: missing {missing[:5]}, unexpected "
                         f"{unexpected[:5]}")
    if args.tie_embeddings:
        model.output.weight = model.tok_embeddings.weight
    return model.to(dtype).eval()


def load_checkpoint(path: str | Path, dtype: torch.dtype = torch.float32):
    """(Transformer, Tokenizer or None) from a Hugging Face checkpoint directory (safetensors only)."""
    from safetensors.torch import load_file

    d = Path(path)
    if not d.is_dir():
        raise ConfigError(f"checkpoint {str(d)!r} is not a directory (expected config.json + *.safetensors)")
    if not (d / "config.json").is_file():
        raise ConfigError(f"checkpoint {str(d)!r} has no config.json: expected a Hugging Face directory "
                          f"(config.json + *.safetensors)")
    files = sorted(d.glob("*.safetensors"))
    if not files:
        bins = ", ".join(p.name for p in d.glob("*.bin")) or "none"
        raise ConfigError(f"checkpoint {str(d)!r} has no *.safetensors weights (found .bin: {bins}); effml loads "
                          f"safetensors only (convert with transformers: save_pretrained(dir))")
    try:
        cfg = json.loads((d / "config.json").read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"checkpoint {str(d)!r}: config.json is not valid JSON ({e})") from None
    args_from_config(cfg, str(d))  # refuse before reading the weights
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(load_file(f))
    model = from_state_dict(cfg, state, str(d), dtype)
    tok = None
    if (d / "tokenizer.json").is_file() or (d / "tokenizer_config.json").is_file():
        from effml.llm.weights import Tokenizer

        tok = Tokenizer(Tokenizer.from_dir(d).hf, d.name)
    return model, tok


def load_checkpoint_llm(path: str | Path):
    """A LoadedModel for the LLM commands; the directory must hold the tokenizer too."""
    from effml.llm.registry import LoadedModel

    model, tok = load_checkpoint(path)
    if tok is None:
        raise ConfigError(f"checkpoint {str(path)!r} has no tokenizer files (tokenizer.json): the LLM commands "
                          f"need one to read the prompt")
    return LoadedModel(Path(path).name, model, tok)


def from_transformers(hf) -> Transformer:
    """effml's decoder with the weights of an in-memory transformers Llama/Qwen2/Qwen3/Mistral/Phi-3 model (fp32)."""
    cfg = hf.config.to_dict()
    cfg.setdefault("architectures", [type(hf).__name__])
    if not cfg["architectures"]:
        cfg["architectures"] = [type(hf).__name__]
    return from_state_dict(cfg, hf.state_dict(), type(hf).__name__)
