"""The real SmolLM2-135M-Instruct weights: our decoder's logits equal transformers'; speculative identity.

The first run converts the GGUF once (~30-80 s on 2 cores) into the user cache; later runs load in seconds.
"""

import pytest
import torch

from effml.errors import ConfigError
from effml.llm.draft import layer_subset
from effml.llm.generate import GenerateConfig, generate
from effml.llm.kvcache import ContiguousCache
from effml.llm.model import build
from effml.llm.speculative import SpecConfig, speculative_generate
from effml.llm.weights import load_hf_reference, load_smollm2


@pytest.fixture(scope="module")
def smol():
    torch.manual_seed(0)
    return load_smollm2()


def test_logits_match_transformers(smol):
    model, tok = smol
    hf = load_hf_reference()
    ids = torch.tensor([tok.chat("What is the capital of France?")])  # (1, T)
    with torch.no_grad():
        ours, ref = model(ids), hf(ids).logits  # (1, T, 49152)
        # one cached decode step against transformers' full forward of the longer sequence
        cache = ContiguousCache(model.args, 1, ids.shape[1] + 1)
        model(ids, cache=cache, last=1)
        nxt = ref[:, -1:].argmax(-1)  # (1, 1)
        step = model(nxt, cache=cache)
        ref2 = hf(torch.cat([ids, nxt], 1)).logits[:, -1:]
    # same fp32 weights and the same op order: agreement to float rounding (logits are O(10))
    assert (ours - ref).abs().max() < 1e-3 and (step - ref2).abs().max() < 1e-3
    assert torch.equal(ours.argmax(-1), ref.argmax(-1))
    assert model.args.params() == sum(p.numel() for p in hf.parameters()) == 134_515_008


def test_tokenizer_chat_template_and_bad_prompt(smol):
    _, tok = smol
    ids = tok.chat("Hi")
    assert ids[0] == 1 and tok.eos_id == 2 and tok.vocab_size == 49152  # <|im_start|> ... ; <|im_end|> ends a turn
    assert tok.decode(tok.encode("Hello world")) == "Hello world"
    assert tok.hf.decode(ids).endswith("<|im_start|>assistant\n")
    with pytest.raises(ConfigError, match="non-empty"):
        tok.chat("")


def test_speculative_greedy_identity_on_the_real_model(smol):
    model, tok = smol
    draft = layer_subset(model, (0, 29))  # untrained: α is low, the output must be identical regardless
    for prompt in ("Name a color.", "Write one sentence about rivers."):
        ids = tok.chat(prompt)
        ref = generate(model, ids, GenerateConfig(max_new_tokens=12)).tokens
        res = speculative_generate(model, draft, ids, SpecConfig(gamma=2, max_new_tokens=12))
        assert res.tokens == ref


def test_speculative_greedy_identity_with_a_quantized_target_on_the_engines_kernels(smol):
    """A regression: with int8-rounded activations (gemv_a8, where the CPU has AVX-512 VNNI or AVX2) the last bits
    of an activation decide its int8 rounding, so the last prompt token must take the same path (the decode step)
    in `generate` as in the speculative target, which feeds it with its first proposal; when `generate` fed it in
    the prefill (F.rms_norm and SDPA instead of the fused decode ops: the same maths, other fp32 rounding) the
    int4 answers below differed from the second token on."""
    import copy

    from effml.llm.engine import FormatConfig, prepare, to_format
    from effml.llm.prompts import grounded_prompts
    from effml.llm.lookup import PromptLookup

    model, tok = smol
    m = copy.deepcopy(model)
    to_format(m, FormatConfig("int4"))
    prepare(m)
    for text in grounded_prompts("eval", 2, seed=1):
        ids = tok.chat(text)
        ref = generate(m, ids, GenerateConfig(max_new_tokens=16)).tokens
        for gamma in (1, 4):
            assert speculative_generate(m, PromptLookup(), ids, SpecConfig(gamma=gamma, max_new_tokens=16)).tokens \
                == ref


def test_fp32_engine_target_with_an_int4_self_draft_keeps_greedy_identity(smol):
    """The fp32 target's verification of 5 and 8 tokens runs gemv_tiles with several rows per pass, its plain step
    one row: each row's sums are the same instructions in the same order (tests/native/test_tiles.py checks the
    bits), so the greedy tokens must equal generate's; LookupFirst mixes lookup and int4-draft rounds."""
    import copy

    from effml.llm.engine import FormatConfig, prepare, to_format
    from effml.llm.prompts import grounded_prompts
    from effml.llm.lookup import LookupFirst

    model, tok = smol
    target, draft = copy.deepcopy(model), copy.deepcopy(model)
    prepare(target)
    to_format(draft, FormatConfig("int4"))
    prepare(draft)
    both = LookupFirst(draft)
    for text in (grounded_prompts("eval", 1, seed=2)[0], "Name three rivers."):
        ids = tok.chat(text)
        ref = generate(target, ids, GenerateConfig(max_new_tokens=24)).tokens
        for gamma in (4, 7):
            res = speculative_generate(target, both, ids, SpecConfig(gamma=gamma, max_new_tokens=24))
            assert res.tokens == ref, (text, gamma)
            assert res.accepted > 0  # the int4 draft agrees with the fp32 target most of the time (α ≈ 0.95)


def test_draft_with_another_vocabulary_is_refused(smol):
    model, tok = smol
    with pytest.raises(ConfigError, match="differs from the target's \\(49152\\)"):
        speculative_generate(model, build("tiny"), tok.chat("Hi"))


def test_every_engine_gives_the_same_tokens_on_the_engines_kernels(smol):
    """Batch invariance on the real model: a request's tokens do not depend on which engine (alone, continuous,
    chunked, static batch) or which other requests ran beside it. With int8-rounded activations (gemv_a8) a last-bit
    difference between two compiled copies of the same sums can flip a rounding (SmolLM2's hidden states reach
    ~600 in one channel: one flip moves a logit by ~1): one C++ loop serves them all, rows rounded on their own."""
    import copy

    from effml.llm.batching import serve_side_by_side
    from effml.llm.serving import EngineConfig, TraceConfig, poisson_trace
    from effml.llm.engine import FormatConfig, prepare, to_format
    from effml.llm.prompts import prompts

    model, tok = smol
    m = copy.deepcopy(model)
    to_format(m, FormatConfig("int4"))
    prepare(m)
    pool = [tok.chat(p) for p in prompts("eval", 4, seed=0)]
    trace = poisson_trace(pool, TraceConfig(n_requests=4, rate=100.0, mean_output=12, max_output=16, seed=0))
    res = serve_side_by_side(m, trace, ("continuous", "static", "chunked"), EngineConfig(max_batch=4, block_size=4))
    for r, a, b, c in zip(trace, res["static"].requests, res["continuous"].requests, res["chunked"].requests):
        alone = generate(m, r.prompt, GenerateConfig(max_new_tokens=len(a.tokens))).tokens
        assert a.tokens == b.tokens == c.tokens == alone
