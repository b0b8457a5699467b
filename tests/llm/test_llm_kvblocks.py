"""Prefix caching in the paged pool: shared blocks give the same logits, are never written, are evicted exactly."""

import pytest
import torch

from effml.errors import ConfigError
from effml.llm.kvblocks import BlockAllocator, CacheFull
from effml.llm.kvcache import PagedCache

BS = 4


def _cache(model, blocks=32, prefix=True):
    return PagedCache(model.args, blocks, BS, prefix_cache=prefix)


def _prefill(model, cache, sid, prompt):
    """Add a sequence and feed the part of its prompt the cache does not hold -> (held, logits of the last token)."""
    held = cache.add(sid, prompt)
    cache.select([sid])
    with torch.no_grad():
        return held, model(torch.tensor([prompt[held:]]), cache=cache, last=1)[0, -1]


@pytest.fixture(params=["generic", "int4 fused"])
def any_model(request, model):
    """The tiny model on the generic path, and in int4 on effml's fused C++ step (which reads the block tables)."""
    if request.param == "generic":
        return model
    import copy

    from effml.llm import fastpath
    from effml.llm.engine import FormatConfig, prepare, to_format

    if not fastpath.available():
        pytest.skip("effml's native kernels are not built here")
    m = copy.deepcopy(model)
    to_format(m, FormatConfig("int4"))
    prepare(m)
    return m


def test_a_shared_prefix_is_served_from_the_pool_with_the_same_logits(any_model):
    model = any_model
    head = [5, 17, 42, 7, 3, 9, 1, 2, 60]  # two full blocks (8 tokens) and one more
    a, b = head + [11, 12], head + [30, 31, 32, 33, 34]
    cache = _cache(model)
    assert _prefill(model, cache, "a", a)[0] == 0  # nothing cached yet
    held, logits = _prefill(model, cache, "b", b)
    assert held == 8  # b shares a's first two blocks (the third holds 60 11 12 _, not b's tokens)
    assert cache.tables["b"][:2] == cache.tables["a"][:2] and cache.allocator.refs[cache.tables["a"][0]] == 2
    assert cache.cached_tokens == 8
    _, ref = _prefill(model, _cache(model, prefix=False), "b", b)  # b computed from scratch
    torch.testing.assert_close(logits, ref, rtol=1e-5, atol=1e-5)
    # a decode step of each on the shared pool: the same as each alone
    for sid, prompt in (("a", a), ("b", b)):
        cache.select([sid])
        with torch.no_grad():
            got = model(torch.tensor([[8]]), cache=cache)[0, -1]
        own = _cache(model, prefix=False)
        _prefill(model, own, sid, prompt)
        with torch.no_grad():
            torch.testing.assert_close(got, model(torch.tensor([[8]]), cache=own)[0, -1], rtol=1e-5, atol=1e-5)


def test_the_last_prompt_token_is_always_computed(model):
    cache = _cache(model)
    p = [1, 2, 3, 4, 5, 6, 7, 8]  # exactly two blocks
    _prefill(model, cache, "a", p)
    held, _ = _prefill(model, cache, "b", p)  # the same prompt: its logits need a pass over its last token
    assert held == 4


def test_a_block_matches_only_under_the_same_prefix(model):
    cache = _cache(model)
    _prefill(model, cache, "a", [1, 2, 3, 4, 5, 6, 7, 8, 9])
    assert _prefill(model, cache, "b", [9, 9, 9, 9, 5, 6, 7, 8, 9])[0] == 0  # block 2's tokens alone do not match


def test_freed_blocks_stay_cached_until_reused_and_then_never_match(model):
    cache = _cache(model, blocks=6)
    p = [1, 2, 3, 4, 5, 6, 7, 8, 9]  # 3 blocks
    _prefill(model, cache, "a", p)
    cache.free("a")
    assert cache.allocator.n_free == 6
    assert _prefill(model, cache, "b", p)[0] == 8  # still in the pool: matched although nobody held it
    cache.free("b")
    _prefill(model, cache, "c", list(range(40, 63)))  # 23 tokens: 6 blocks, the cached ones reused last
    assert cache.prefix.match(p, BS, 8) == []  # reused for other tokens: keys gone
    cache.free("c")
    assert _prefill(model, cache, "d", p)[0] == 0


def test_truncating_into_a_shared_block_copies_it_first(model):
    cache = _cache(model)
    p = [1, 2, 3, 4, 5, 6, 7, 8, 9]
    _prefill(model, cache, "a", p)
    _prefill(model, cache, "b", p)  # shares blocks 0 and 1
    shared = cache.tables["a"][1]
    before = cache.k[:, :, shared].clone()
    cache.select(["b"])
    cache.truncate([6])  # b keeps tokens 0..5: half of the shared block 1, which it will write into next
    assert cache.tables["b"][1] != shared and cache.allocator.refs[shared] == 1
    torch.testing.assert_close(cache.k[:, :, cache.tables["b"][1], :2], before[:, :, :2])
    with torch.no_grad():
        model(torch.tensor([[50, 51]]), cache=cache)  # b writes positions 6, 7
    assert torch.equal(cache.k[:, :, shared], before)  # a's block is untouched


def test_allocator_reference_counts():
    alloc = BlockAllocator(3)
    b = alloc.allocate()
    alloc.share(b)
    alloc.free([b])
    assert alloc.n_free == 2 and alloc.refs[b] == 1
    alloc.free([b], keep={b: None})
    assert alloc.free_list[0] == b  # a cached block goes to the end that is reused last
    alloc.allocate(), alloc.allocate()
    assert alloc.allocate() == b
    with pytest.raises(CacheFull, match="all 3 KV blocks are in use"):
        alloc.allocate()


def test_adding_a_sequence_twice_is_refused(model):
    cache = _cache(model)
    cache.add("a", [1, 2])
    with pytest.raises(ConfigError, match="already in the paged cache"):
        cache.add("a", [1, 2])
