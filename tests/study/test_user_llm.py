"""effml.study on a decoder LLM (a config-built GPT-2, random weights): decoder plans, perplexity ↓, decode speed."""

import torch

from effml.study.user import study


def test_decoder_study(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=4, n_embd=64, vocab_size=128, n_positions=64,
                                       bos_token_id=0, eos_token_id=0)).eval()
    ids = torch.randint(0, 128, (4, 32), generator=torch.Generator().manual_seed(1))  # (4, 32) token ids

    @torch.no_grad()
    def evaluate(m):
        return {"perplexity": torch.exp(m(ids, labels=ids).loss).item()}

    res = study(model, evaluate, example_inputs={"input_ids": ids[:2]}, calibration=ids, devices=(),
                plans=["weight-only-int4", "gptq-4b", "smoothquant-int8", "int8-static", "kmeans-2b-qat"], store=tmp_path / "llm.db",
                measure_budget_s=0.3)
    assert res.objective == "perplexity" and res.higher_is_better is False
    # SmoothQuant gets the (4, 32) token ids as four (1, 32) batches; GPTQ the tensor itself
    assert [r["name"] for r in res.rows] == ["baseline", "weight-only-int4", "gptq-4b", "smoothquant-int8"]
    assert dict(res.skipped).keys() == {"int8-static", "kmeans-2b-qat"}
    # baseline: 112,384 fp32 params. int4 (group 32) of the 4 block matrices, 49,152 weights per layer x 2 layers:
    # 49,152 B of codes + 3,072 groups x (fp32 scale + zero) 24,576 B; left fp32: wte + wpe 12,288 params
    # (lm_head is tied to wte), biases 1,152, LayerNorms 640 -> 14,080 x 4 = 56,320 B; total 130,048 B
    assert res.row("baseline")["model_bytes"] == 4 * 112_384
    assert res.row("weight-only-int4")["model_bytes"] == 49_152 + 24_576 + 56_320
    for r in res.rows:  # a causal LM: time to first token and decode tokens/s timed beside the baseline
        assert r["ttft_s"] > 0 and r["decode_tok_s"] > 0 and r["new_tokens"] == 16
        assert r["peak_mem_bytes"] > r["resident_bytes"] > 0
    assert res.row("gptq-4b")["decode_speedup"] > 0
