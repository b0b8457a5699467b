"""KV caches: incremental decoding equals a full forward; paged blocks, free list, copy-free append, waste."""

import pytest
import torch

from effml.errors import ConfigError
from effml.llm.kvcache import (
    BlockAllocator,
    CacheFull,
    ContiguousCache,
    PagedCache,
    kv_bytes_per_token,
)
from effml.llm.model import ModelArgs


@pytest.fixture(scope="module")
def tokens(model):
    return torch.randint(0, model.vocab_size, (3, 20), generator=torch.Generator().manual_seed(0))


def _paged(model, n_seqs, block_size=4, kernel="gather", num_blocks=64):
    cache = PagedCache(model.args, num_blocks, block_size, kernel=kernel)
    for i in range(n_seqs):
        cache.add(i)
    return cache.select(list(range(n_seqs)))


def _incremental(model, tokens, cache, prefill=7):
    with torch.no_grad():
        out = [model(tokens[:, :prefill], cache=cache)]
        for t in range(prefill, tokens.shape[1]):
            out.append(model(tokens[:, t:t + 1], cache=cache))
    return torch.cat(out, 1)  # (B, T, V)


@pytest.mark.parametrize("make", [lambda m: ContiguousCache(m.args, 3, 32), lambda m: _paged(m, 3),
                                  lambda m: _paged(m, 3, kernel="blockwise"), lambda m: _paged(m, 3, block_size=1)])
def test_incremental_decoding_equals_the_full_forward(model, tokens, make):
    with torch.no_grad():
        full = model(tokens)
    torch.testing.assert_close(_incremental(model, tokens, make(model)), full, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("kind", ["contiguous", "paged"])
def test_ragged_batch_each_sequence_attends_to_its_own_length(model, tokens, kind):
    with torch.no_grad():
        full = model(tokens[:2])
        if kind == "paged":
            cache = _paged(model, 2)
            model(tokens[0:1, :5], cache=cache.select([0]))
            model(tokens[1:2, :9], cache=cache.select([1]))
            cache.select([0, 1])
        else:
            cache = ContiguousCache(model.args, 2, 32)
            model(tokens[:2, :9], cache=cache)
            cache.truncate([5, 9])  # sequence 0 forgets tokens 5..8
        step = model(torch.stack([tokens[0, 5:6], tokens[1, 9:10]]), cache=cache)  # (2, 1, V)
    torch.testing.assert_close(step[0, 0], full[0, 5], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(step[1, 0], full[1, 9], atol=1e-4, rtol=1e-4)
    assert cache.lengths == [6, 10]


def test_blocks_are_allocated_on_demand_and_waste_is_the_last_block_tail(model, tokens):
    cache = _paged(model, 1, block_size=4)
    with torch.no_grad():
        model(tokens[:1, :9], cache=cache)
    # 9 tokens in blocks of 4 -> ceil(9/4) = 3 blocks = 12 slots, 3 of them empty: waste 3/12
    assert len(cache.tables[0]) == 3
    st = cache.stats(bytes_per_token=10)
    assert (st.reserved_tokens, st.used_tokens, st.waste) == (12, 9, 0.25)
    assert st.to_dict()["reserved_bytes"] == 120
    with torch.no_grad():
        model(tokens[:1, 9:12], cache=cache)  # 12 tokens fill 3 blocks exactly: no new block, no waste
    assert len(cache.tables[0]) == 3 and cache.stats(1).waste == 0


def test_append_is_copy_free_only_the_new_rows_change(model, tokens):
    cache = _paged(model, 1, block_size=4)
    with torch.no_grad():
        model(tokens[:1, :6], cache=cache)
        k_before, ptr = cache.k.clone(), cache.k.data_ptr()
        model(tokens[:1, 6:7], cache=cache)
    assert cache.k.data_ptr() == ptr  # the pool is written in place, never reallocated or concatenated
    changed = (cache.k != k_before).any(-1).any(1)  # (L, H_kv, N, bs, hd) -> (L, N, bs): which slots changed
    block, offset = cache.tables[0][6 // 4], 6 % 4  # token 6 lives in the 2nd block at offset 2
    a = model.args
    assert changed.sum() == a.n_layers and changed[:, block, offset].all()  # one slot per layer, nothing else


def test_free_list_reuses_blocks_and_truncate_returns_them(model, tokens):
    cache = _paged(model, 2, block_size=4, num_blocks=6)
    with torch.no_grad():
        model(tokens[:2, :8], cache=cache)  # 2 sequences x 2 blocks
    assert cache.allocator.n_free == 2
    cache.truncate([5, 8])  # sequence 0 keeps ceil(5/4) = 2 blocks: nothing freed yet
    assert cache.allocator.n_free == 2
    cache.truncate([3, 8])  # now 1 block
    assert cache.allocator.n_free == 3
    freed = set(range(6)) - {b for t in cache.tables.values() for b in t}
    cache.free(1)
    assert cache.allocator.n_free == 5 and 1 not in cache.tables
    cache.add(7)
    cache.select([7])
    with torch.no_grad():
        model(tokens[:1, :4], cache=cache)
    assert cache.tables[7][0] in set(range(6)) - set(cache.tables[0])  # a freed block, reused
    assert freed  # (blocks were really returned)


def test_out_of_blocks_raises_before_allocating_anything(model, tokens):
    cache = _paged(model, 2, block_size=4, num_blocks=3)
    # 2 sequences x ceil(8/4) blocks
    with pytest.raises(CacheFull, match="4 more blocks needed, 3 free"), torch.no_grad():
        model(tokens[:2, :8], cache=cache)
    assert cache.allocator.n_free == 3 and all(not t for t in cache.tables.values())
    alloc = BlockAllocator(1)
    alloc.allocate()
    with pytest.raises(CacheFull):
        alloc.allocate()


def test_contiguous_cache_refuses_overflow_and_bad_sizes(model, tokens):
    cache = ContiguousCache(model.args, 1, 8)
    with pytest.raises(CacheFull, match="max_len=8"), torch.no_grad():
        model(tokens[:1, :9], cache=cache)
    with pytest.raises(ConfigError, match="exceeds the model context"):
        ContiguousCache(model.args, 1, 10_000)
    with pytest.raises(ConfigError, match="not in the paged cache"):
        PagedCache(model.args, 4, 4).select(["nope"])


def test_kv_bytes_per_token_smollm2():
    # 2 (K, V) x 30 layers x 3 KV heads x 64 head_dim x 4 B (fp32) = 46,080 B per token
    assert kv_bytes_per_token(ModelArgs.preset("smollm2-135m")) == 46_080
    assert kv_bytes_per_token(ModelArgs.preset("smollm2-135m"), torch.bfloat16) == 23_040
