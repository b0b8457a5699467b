"""--config as a local model folder or a hub id: from the folder, from the local HF cache (no network), and a
clear one-line error offline, unreachable, or for a folder without config.json — never a hang."""

import json
import socket
import time

import pytest

from effml import configs
from effml.cli import main
from effml.configs import hub
from effml.errors import ConfigError

# A 1-layer BERT small enough to count by hand (hidden 32, 2 heads, ffn 64, vocab 100, 64 positions, 2 types):
# embeddings 100·32 + 64·32 + 2·32 + LayerNorm 2·32 = 3200 + 2048 + 64 + 64 = 5,376
# layer: q,k,v,o 4·(32·32 + 32) = 4,224; LayerNorm 64; ffn in 32·64 + 64 = 2,112; ffn out 64·32 + 32 = 2,080;
#        LayerNorm 64 -> 8,544;   pooler 32·32 + 32 = 1,056;   total 5,376 + 8,544 + 1,056 = 14,976
TINY_BERT = {"model_type": "bert", "architectures": ["BertModel"], "vocab_size": 100, "hidden_size": 32,
             "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64,
             "max_position_embeddings": 64, "type_vocab_size": 2}
TINY_BERT_PARAMS = 14_976
# A 2-layer Llama (hidden 64, 4 heads, 2 KV heads, head_dim 16, ffn 128, vocab 256, untied):
# embed 256·64 = 16,384; per layer q 64·64 + k 64·32 + v 64·32 + o 64·64 = 12,288, SwiGLU 3·64·128 = 24,576,
# 2 RMSNorms 128 -> 36,992; x2 = 73,984; final norm 64; lm_head 256·64 = 16,384; total 106,816
TINY_LLAMA = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": 256, "hidden_size": 64,
              "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 128,
              "max_position_embeddings": 128, "tie_word_embeddings": False}
TINY_LLAMA_PARAMS = 106_816


def _folder(tmp_path, name, cfg):
    d = tmp_path / name
    d.mkdir()
    (d / "config.json").write_text(json.dumps(cfg))
    return d


def _fake_cache(tmp_path, repo_id, cfg, monkeypatch):
    """The layout huggingface_hub writes: models--org--name/{refs/main, snapshots/<rev>/config.json}."""
    root = tmp_path / "hf-cache"
    repo = root / ("models--" + repo_id.replace("/", "--"))
    rev = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(rev)
    (repo / "snapshots" / rev).mkdir(parents=True)
    (repo / "snapshots" / rev / "config.json").write_text(json.dumps(cfg))
    monkeypatch.setenv("HF_HUB_CACHE", str(root))
    return root


@pytest.fixture
def no_network(monkeypatch):
    """Any TCP connection attempt fails the test: the cache and offline paths must not touch the network."""
    def refuse(*a, **k):
        raise AssertionError(f"network call attempted: {a}")

    monkeypatch.setattr(socket, "create_connection", refuse)


def test_model_folder(tmp_path):
    d = _folder(tmp_path, "tiny-bert", TINY_BERT)
    cfg = configs.load(str(d))
    assert (cfg.name, cfg.task) == ("tiny-bert", "encoder")
    assert sum(p.numel() for p in configs.build(cfg).parameters()) == TINY_BERT_PARAMS


def test_model_folder_without_config_json(tmp_path):
    d = tmp_path / "weights-only"
    d.mkdir()
    (d / "model.safetensors").write_bytes(b"")
    with pytest.raises(ConfigError, match=r"model folder .*weights-only' has no config.json.*model.safetensors"):
        configs.load(str(d))


def test_hub_id_from_the_local_cache_without_network(tmp_path, monkeypatch, no_network):
    _fake_cache(tmp_path, "acme/tiny-llama", TINY_LLAMA, monkeypatch)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # even online, a cached config is not re-fetched
    cfg = configs.load("acme/tiny-llama")
    assert (cfg.name, cfg.task, cfg.source) == ("acme/tiny-llama", "causal-lm", "hub:acme/tiny-llama")
    assert sum(p.numel() for p in configs.build(cfg).parameters()) == TINY_LLAMA_PARAMS


def test_hub_id_offline_not_cached_is_a_clear_error(tmp_path, monkeypatch, no_network):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError, match=r"'acme/absent' is not a local folder and not in the Hugging Face cache "
                                          r".*HF_HUB_OFFLINE is set"):
        configs.load("acme/absent")


def test_hub_id_unreachable_hub_fails_fast(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # discard port: nothing listens, connect is refused
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match=r"the hub is unreachable \(127.0.0.1:9 not reachable"):
        configs.load("acme/absent")
    assert time.perf_counter() - t0 < hub.CONNECT_TIMEOUT_S + 1  # bounded by the connect timeout, no hang


def test_hub_id_pattern():
    assert hub.looks_like_hub_id("meta-llama/Llama-2-7b-hf") and hub.looks_like_hub_id("acme/m.v1_2")
    for not_hub in ("./x/y", "/abs/path", "a/b/c", "org/config.json", "gpt3", "~/models/x"):
        assert not hub.looks_like_hub_id(not_hub), not_hub


@pytest.mark.parametrize("argv", [
    ["profile", "--seq", "16", "--json"],
    ["predict", "--seq", "16", "--hw", "h100-sxm", "--json"],
    ["kv", "--seq", "128", "--json"],
    ["train-mem", "--seq", "16", "--json"],
])
def test_cli_commands_take_a_folder_and_a_cached_hub_id(argv, tmp_path, monkeypatch, capsys, no_network):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = _folder(tmp_path, "tiny-llama", TINY_LLAMA)
    _fake_cache(tmp_path, "acme/tiny-llama", TINY_LLAMA, monkeypatch)
    outs = []
    for source in (str(folder), "acme/tiny-llama"):
        cmd, rest = argv[0], argv[1:]
        assert main([cmd, "--config", source, *rest]) == 0, capsys.readouterr().err
        outs.append(json.loads(capsys.readouterr().out))
    a, b = outs
    if cmd == "kv":
        # (K and V) 2 · 2 layers · 2 KV heads · 16 head_dim · 128 tokens · 2 bytes (fp16, kv's default) = 32,768
        assert a["bytes"] == 32_768
    if "params" in a:
        assert a["params"] == TINY_LLAMA_PARAMS
    # the same config from a folder and from the cache: the same numbers (names differ)
    assert json.dumps(a).replace("tiny-llama", "X").replace("acme/", "") == \
        json.dumps(b).replace("tiny-llama", "X").replace("acme/", "")


def test_a_hanging_name_lookup_is_bounded(monkeypatch):
    # a resolver that never answers: create_connection's timeout does not cover the DNS lookup, the probe does
    def hang(*a, **k):  # the abandoned probe thread ends as a real lookup would, with an OSError
        time.sleep(30)
        raise socket.gaierror("lookup timed out")

    monkeypatch.setattr(socket, "create_connection", hang)
    t0 = time.perf_counter()
    why = hub.reachable("https://hub.invalid", timeout_s=0.5)
    assert time.perf_counter() - t0 < 2.0 and why == "hub.invalid:443 not reachable within 0.5 s (name lookup hung)"
