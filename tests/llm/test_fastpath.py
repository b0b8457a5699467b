"""The fused decode step (effml.llm.fastpath) computes what the generic Transformer.hidden computes."""

import copy

import pytest
import torch

from effml.llm import fastpath
from effml.llm.engine import FormatConfig, prepare, to_format
from effml.llm.generate import GenerateConfig, generate, new_session
from effml.llm.kvcache import CacheFull

pytestmark = pytest.mark.skipif(not fastpath.available(), reason="effml's native kernels are not built here")


def _feed_both(m, prompt, steps, kv="contiguous"):
    """Logits of the prompt's prefill and each later feed, with the fused path on and off."""
    out = []
    for fast in (True, False):
        m.fast_decode = fast
        s = new_session(kv, m, 64)
        out.append([s.feed(prompt)] + [s.feed(toks) for toks in steps])
    m.fast_decode = True
    return out


@pytest.mark.parametrize("fmt", ["fp32", "bf16", "int8", "int4"])
def test_fused_steps_give_the_generic_logits(model, fmt):
    m = copy.deepcopy(model)
    to_format(m, FormatConfig(fmt))
    plan = prepare(m)
    assert m.fast_decode and any("fused decode ops" in k for k in plan.kernels)
    with torch.no_grad():
        fast, slow = _feed_both(m, [5, 17, 42, 7], [[3], [9, 1, 2, 60], [11]])  # 1-token and 4-token feeds
    for a, b in zip(fast, slow):
        # the same fp32 arithmetic in another summation order: logits of size ~10 agree to ~1e-5 relative
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    if fmt != "bf16" or fastpath.kernel_spec(m.layers[0].attention.wqkv) is not None:
        # every projection is effml's GEMV or torch's int4 kernel: the whole layer loop runs in C++ (int4: its own
        # fp32 <-> bf16 loops around the kernel, which must round as torch's .to() does for the 1e-5 match below)
        assert m._fast_layers is not None
    layers, m._fast_layers = m._fast_layers, None  # the Python loop over the same kernels: the same logits
    with torch.no_grad():
        py, _ = _feed_both(m, [5, 17, 42, 7], [[3], [9, 1, 2, 60], [11]])
    m._fast_layers = layers
    for a, b in zip(py, fast):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    m.fast_decode = False
    ref = generate(m, [5, 17, 42], GenerateConfig(max_new_tokens=10)).tokens
    m.fast_decode = True
    assert generate(m, [5, 17, 42], GenerateConfig(max_new_tokens=10)).tokens == ref


def test_calls_it_does_not_take_run_the_generic_step(model):
    m = copy.deepcopy(model)
    prepare(m)
    long_feed = list(range(1, fastpath.MAX_TOKENS + 2))  # 17 tokens: a prefill, the generic path
    s = new_session("contiguous", m, 64)
    assert not fastpath.eligible(m, torch.tensor([long_feed]), s.cache)
    assert fastpath.eligible(m, torch.tensor([[1]]), s.cache)
    p = new_session("paged", m, 64)  # a paged cache: generic (the fused attend reads a contiguous one)
    assert not fastpath.eligible(m, torch.tensor([[1]]), p.cache)
    with torch.no_grad():
        fast, slow = _feed_both(m, long_feed, [[4]], kv="paged")
    torch.testing.assert_close(fast[1], slow[1])


def test_a_full_cache_is_the_same_error(model):
    m = copy.deepcopy(model)
    prepare(m)
    s = new_session("contiguous", m, 8)
    with torch.no_grad():
        s.feed([1, 2, 3, 4, 5, 6, 7])
        with pytest.raises(CacheFull, match="exceed max_len=8"):
            s.feed([8, 9])


def test_bf16_weights_decode_with_fp32_activations(model):
    """bf16 weights are widened exactly inside effml's GEMV: the step runs in fp32 with the bf16 weights' values."""
    m = copy.deepcopy(model)
    to_format(m, FormatConfig("bf16"))
    plan = prepare(m)
    assert m.fast_decode and plan.act_dtype == "float32" and m.tok_embeddings.weight.dtype == torch.bfloat16
    with torch.no_grad():
        fast, slow = _feed_both(m, [5, 17, 42, 7], [[3], [9, 1]])
    for a, b in zip(fast, slow):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
