"""KV caches the decoder attends through: contiguous (pre-allocated rows) and paged (fixed-size blocks).

Both implement the protocol `Transformer.forward` calls once per forward pass:

    positions = cache.begin(T)           # (B, T) absolute positions of the T new tokens of each sequence
    y = cache.attend(layer, q, k, v)     # per layer: store k, v (B, H_kv, T, hd) in place, attend over all held
    cache.commit(T)                      # lengths += T

and `truncate(lengths)` (drop rejected speculative tokens). Sequences in a batch may have different lengths
(continuous batching): keys at positions > a query's own position are masked.

ContiguousCache: K and V are (layers, B, H_kv, max_len, hd) reserved up front; each sequence owns a row of
max_len slots whether it uses them or not. PagedCache (vLLM, Kwon et al. 2023): one pool of fixed-size blocks
(num_blocks, block_size, H_kv, hd) per layer, a block table per sequence, a free-list allocator; appending writes
only the new rows into the sequence's last block (copy-free; a new block when the last one is full) and attention
reads the blocks through the block table (`PAGED_KERNELS`). No per-sequence contiguous cache is ever kept: the
`gather` kernel indexes one layer's blocks into a transient tensor for the SDPA call (what a GPU kernel streams
through SRAM), the `blockwise` kernel streams one block column at a time with an online softmax.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from effml.errors import ConfigError
from effml.llm.kvblocks import BlockAllocator, CacheFull, PrefixIndex
from effml.llm.model import ModelArgs, gqa_attention

__all__ = ["BlockAllocator", "CacheFull", "ContiguousCache", "KVStats", "PagedCache", "PrefixIndex", "VarlenPagedCache",
           "kv_bytes_per_token"]


def _visible(positions: torch.Tensor, S: int) -> torch.Tensor:
    """(B, T) query positions -> (B, T, S) bool: key j is visible to a query at position p iff j <= p."""
    return torch.arange(S, device=positions.device)[None, None, :] <= positions[:, :, None]


class ContiguousCache:
    """Pre-allocated (B, H_kv, max_len, hd) K and V per layer; sequence b writes row b at its own length."""

    kind = "contiguous"

    def __init__(self, args: ModelArgs, batch: int, max_len: int, dtype: torch.dtype = torch.float32):
        if batch <= 0 or max_len <= 0:
            raise ConfigError(f"ContiguousCache batch and max_len must be positive, got {batch}, {max_len}")
        if max_len > args.max_seq_len:
            raise ConfigError(f"ContiguousCache max_len={max_len} exceeds the model context {args.max_seq_len}")
        shape = (args.n_layers, batch, args.n_kv_heads, max_len, args.head_dim)
        self.k = torch.zeros(shape, dtype=dtype)  # (L, B, H_kv, max_len, hd)
        self.v = torch.zeros(shape, dtype=dtype)
        self.batch, self.max_len = batch, max_len
        self.lengths = [0] * batch
        self._step = None

    def begin(self, T: int) -> torch.Tensor:
        if max(self.lengths) + T > self.max_len:
            raise CacheFull(f"ContiguousCache: {max(self.lengths)} + {T} tokens exceed max_len={self.max_len}")
        lens = torch.tensor(self.lengths)
        positions = lens[:, None] + torch.arange(T)  # (B, T)
        S = max(self.lengths) + T
        uniform = len(set(self.lengths)) == 1
        mask = None if (uniform and T == 1) else _visible(positions, S)  # (B, T, S); one step of one token: all
        self._step = (positions, S, uniform, self.lengths[0], mask)
        return positions

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        positions, S, uniform, start, mask = self._step
        kb, vb = self.k[layer], self.v[layer]  # (B, H_kv, max_len, hd)
        T = k.shape[2]
        if uniform:  # one slice for the whole batch
            kb[:, :, start:start + T] = k
            vb[:, :, start:start + T] = v
        else:  # ragged: row b at its own positions (advanced indices -> (B, T, H_kv, hd))
            rows = torch.arange(self.batch)[:, None]
            kb[rows, :, positions] = k.transpose(1, 2)
            vb[rows, :, positions] = v.transpose(1, 2)
        return gqa_attention(q, kb[:, :, :S], vb[:, :, :S], mask)  # (B, H, T, hd)

    def commit(self, T: int) -> None:
        self.lengths = [n + T for n in self.lengths]
        self._step = None

    def truncate(self, lengths: list[int]) -> None:
        """Forget everything past lengths[b] (the rows are overwritten by later appends)."""
        if len(lengths) != self.batch or any(not 0 <= n <= m for n, m in zip(lengths, self.lengths)):
            raise ConfigError(f"truncate lengths {lengths} must be within the current lengths {self.lengths}")
        self.lengths = list(lengths)

    def stats(self, bytes_per_token: float) -> KVStats:
        return KVStats(self.batch * self.max_len, sum(self.lengths), bytes_per_token)


@dataclass(frozen=True)
class KVStats:
    """Memory reserved for KV vs memory holding live tokens."""

    reserved_tokens: int
    used_tokens: int
    bytes_per_token: float

    @property
    def waste(self) -> float:
        return 1.0 - self.used_tokens / self.reserved_tokens if self.reserved_tokens else 0.0

    def to_dict(self) -> dict:
        return {"reserved_tokens": self.reserved_tokens, "used_tokens": self.used_tokens,
                "reserved_bytes": self.reserved_tokens * self.bytes_per_token,
                "used_bytes": self.used_tokens * self.bytes_per_token, "waste": self.waste}


def _attend_gather(q, k_pool, v_pool, table, mask):
    """Index the blocks of each sequence through its block table in one gather, then attend.

    k_pool: (H_kv, N, bs, hd); table: (B, nb) block ids -> keys (B, H_kv, nb*bs, hd) for this layer only.
    """
    B, nb = table.shape
    Hkv, _, bs, hd = k_pool.shape
    kb = k_pool[:, table].transpose(0, 1).reshape(B, Hkv, nb * bs, hd)  # (H_kv, B, nb, bs, hd) -> (B, H_kv, ...)
    vb = v_pool[:, table].transpose(0, 1).reshape(B, Hkv, nb * bs, hd)
    return gqa_attention(q, kb, vb, mask)


def _attend_blockwise(q, k_pool, v_pool, table, mask):
    """Flash-decoding style: one block column at a time with an online softmax (working set: one block per
    sequence), the way a paged-attention kernel streams blocks; exact up to float rounding."""
    B, H, T, hd = q.shape
    Hkv, bs = k_pool.shape[0], k_pool.shape[2]
    rep = H // Hkv
    qg = q.reshape(B, Hkv, rep * T, hd) * (1.0 / math.sqrt(hd))  # (B, H_kv, rep*T, hd)
    m = torch.full((B, Hkv, rep * T, 1), -math.inf)
    den = torch.zeros(B, Hkv, rep * T, 1)
    acc = torch.zeros(B, Hkv, rep * T, hd)
    for j in range(table.shape[1]):
        kj = k_pool[:, table[:, j]].permute(1, 0, 3, 2)  # (B, H_kv, hd, bs)
        vj = v_pool[:, table[:, j]].transpose(0, 1)  # (B, H_kv, bs, hd)
        s = (qg @ kj).float()  # (B, H_kv, rep*T, bs)
        mj = mask[:, None, None, :, j * bs:(j + 1) * bs].expand(B, 1, rep, T, bs).reshape(B, 1, rep * T, bs)
        s = s.masked_fill(~mj, -math.inf)
        m_new = torch.maximum(m, s.amax(-1, keepdim=True))
        safe = torch.where(torch.isinf(m_new), torch.zeros_like(m_new), m_new)
        p = torch.exp(s - safe)  # (B, H_kv, rep*T, bs)
        scale = torch.exp(m - safe)
        den = den * scale + p.sum(-1, keepdim=True)
        acc = acc * scale + p @ vj.float()
        m = m_new
    out = acc / den.clamp_min(1e-30)
    return out.to(q.dtype).reshape(B, H, T, hd)


PAGED_KERNELS = {"gather": _attend_gather, "blockwise": _attend_blockwise}


def _write(pool: torch.Tensor, slots: torch.Tensor, bs: int, rows: torch.Tensor) -> None:
    """rows (M, H_kv, hd) into a layer's pool (H_kv, N, bs, hd) at the flat slots (M,) = block * bs + offset."""
    pool[:, slots // bs, slots % bs] = rows.transpose(0, 1)


class PagedCache:
    """A pool of (num_blocks, block_size) K/V slots per layer shared by any number of sequences.

    Layout (L, H_kv, N, bs, hd): each KV head has its own pool of blocks, so attention, which reads one KV head's
    rows at a time, streams a sequence's blocks as it streams a contiguous cache's rows when they are consecutive
    (the allocator hands out consecutive blocks to a sequence that grows alone). With the heads interleaved per
    position, (N, bs, H_kv, hd), a head read every H_kv-th 256-byte row: benchmarks/bench_paged.py measured a paged
    int4 decode step at 1000 tokens 1.62-1.77x the contiguous cache's then, 1.16-1.41x with this layout."""

    kind = "paged"

    def __init__(self, args: ModelArgs, num_blocks: int, block_size: int = 16, dtype: torch.dtype = torch.float32,
                 kernel: str = "gather", prefix_cache: bool = False):
        if block_size <= 0:
            raise ConfigError(f"PagedCache block_size must be positive, got {block_size}")
        if kernel not in PAGED_KERNELS:
            raise ConfigError(f"PagedCache kernel {kernel!r} is not one of {', '.join(PAGED_KERNELS)}")
        shape = (args.n_layers, args.n_kv_heads, num_blocks, block_size, args.head_dim)
        self.k = torch.zeros(shape, dtype=dtype)  # (L, H_kv, N, bs, hd)
        self.v = torch.zeros(shape, dtype=dtype)
        self.block_size, self.max_seq_len = block_size, args.max_seq_len
        self.allocator = BlockAllocator(num_blocks)
        self.tables: dict[object, list[int]] = {}  # sequence id -> its block ids, in order
        self.lens: dict[object, int] = {}
        self.kernel = PAGED_KERNELS[kernel]
        self.seq_ids: list = []  # the sequences of the current batch, in batch order
        self._step = None
        # prefix caching (kvblocks.PrefixIndex): full prompt blocks are indexed once computed, and a new sequence
        # whose prompt starts with indexed blocks shares them instead of computing them again
        self.prefix = PrefixIndex(self.allocator) if prefix_cache else None
        self.prompts: dict[object, list[int]] = {}  # sequence id -> its prompt (the tokens its blocks index)
        self.indexed: dict[object, int] = {}  # sequence id -> its first block not yet indexed
        self.cached_tokens = 0  # prompt tokens served from the index so far

    # ---- sequences -------------------------------------------------------------------------------
    def add(self, seq_id, prompt: list[int] | None = None) -> int:
        """A new sequence; with prefix caching and its prompt, it starts holding the longest indexed prefix of
        the prompt (never the last token, whose logits the caller needs). Returns the tokens it holds: feed
        prompt[returned:]."""
        if seq_id in self.tables:
            raise ConfigError(f"sequence {seq_id!r} is already in the paged cache")
        self.tables[seq_id], self.lens[seq_id] = [], 0
        if self.prefix is None or prompt is None:
            return 0
        prompt = [int(t) for t in prompt]
        blocks = self.prefix.match(prompt, self.block_size, len(prompt) - 1)
        for b in blocks:
            self.allocator.share(b)
        self.tables[seq_id], self.lens[seq_id] = blocks, len(blocks) * self.block_size
        self.prompts[seq_id], self.indexed[seq_id] = prompt, len(blocks)
        self.cached_tokens += self.lens[seq_id]
        return self.lens[seq_id]

    def free(self, seq_id) -> None:
        self.allocator.free(self.tables.pop(seq_id), self._cached_blocks)
        del self.lens[seq_id]
        self.prompts.pop(seq_id, None)
        self.indexed.pop(seq_id, None)

    @property
    def _cached_blocks(self):
        """Blocks holding an indexed prefix (the allocator hands them out last once free)."""
        return self.prefix.key_of if self.prefix is not None else frozenset()

    def _index(self) -> None:
        """Index the prompt blocks the last pass filled (prefix caching)."""
        if self.prefix is None:
            return
        for s in self.seq_ids:
            prompt = self.prompts.get(s)
            if prompt is None:
                continue
            full = min(self.lens[s], len(prompt)) // self.block_size
            if full > self.indexed[s]:
                self.prefix.add(self.tables[s], prompt, self.block_size, self.indexed[s], full)
                self.indexed[s] = full

    def select(self, seq_ids: list) -> PagedCache:
        """Make `seq_ids` (in this order) the batch the next forward pass works on."""
        missing = [s for s in seq_ids if s not in self.tables]
        if missing:
            raise ConfigError(f"sequences {missing} are not in the paged cache; add() them first")
        self.seq_ids = list(seq_ids)
        return self

    def blocks_needed(self, seq_id, extra_tokens: int) -> int:
        need = -(-(self.lens.get(seq_id, 0) + extra_tokens) // self.block_size)
        return max(0, need - len(self.tables.get(seq_id, ())))

    @property
    def lengths(self) -> list[int]:
        return [self.lens[s] for s in self.seq_ids]

    # ---- the forward-pass protocol ----------------------------------------------------------------
    def begin(self, T: int) -> torch.Tensor:
        bs = self.block_size
        for s in self.seq_ids:
            if self.lens[s] + T > self.max_seq_len:
                raise ConfigError(f"sequence {s!r}: {self.lens[s] + T} tokens exceed the context {self.max_seq_len}")
        need = sum(self.blocks_needed(s, T) for s in self.seq_ids)
        if need > self.allocator.n_free:  # all or nothing: nothing is allocated when the step cannot run
            raise CacheFull(f"PagedCache: {need} more blocks needed, {self.allocator.n_free} free")
        for s in self.seq_ids:
            for _ in range(self.blocks_needed(s, T)):
                self.tables[s].append(self.allocator.allocate())
        lens = torch.tensor(self.lengths)
        positions = lens[:, None] + torch.arange(T)  # (B, T)
        nb = max(len(self.tables[s]) for s in self.seq_ids)
        table = torch.tensor([self.tables[s] + [0] * (nb - len(self.tables[s])) for s in self.seq_ids])  # (B, nb)
        slots = table.gather(1, positions // bs) * bs + positions % bs  # (B, T): flat slot of each new token
        self._step = (table, slots.reshape(-1), _visible(positions, nb * bs))  # mask (B, T, nb*bs)
        return positions

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        table, slots, mask = self._step
        kp, vp = self.k[layer], self.v[layer]  # (H_kv, N, bs, hd)
        B, Hkv, T, hd = k.shape
        _write(kp, slots, self.block_size, k.transpose(1, 2).reshape(B * T, Hkv, hd))  # the new rows only
        _write(vp, slots, self.block_size, v.transpose(1, 2).reshape(B * T, Hkv, hd))
        return self.kernel(q, kp, vp, table, mask)  # (B, H, T, hd)

    def commit(self, T: int) -> None:
        for s in self.seq_ids:
            self.lens[s] += T
        self._step = None
        self._index()

    def truncate(self, lengths: list[int]) -> None:
        """Shorten the batch's sequences to `lengths`, returning now-unused blocks to the free list. A kept last
        block that is partly dropped and shared (or indexed) is copied first: the sequence writes into it next."""
        keep_cached = self._cached_blocks
        for s, n in zip(self.seq_ids, lengths):
            if not 0 <= n <= self.lens[s]:
                raise ConfigError(f"truncate sequence {s!r} to {n}: it holds {self.lens[s]} tokens")
            keep = -(-n // self.block_size)
            self.allocator.free(self.tables[s][keep:], keep_cached)
            del self.tables[s][keep:]
            self.lens[s] = n
            if s in self.indexed:
                self.indexed[s] = min(self.indexed[s], n // self.block_size)
            last = self.tables[s][-1] if n % self.block_size else None
            if last is not None and self.prefix is not None and (self.allocator.refs[last] > 1 or last in keep_cached):
                if self.allocator.refs[last] == 1:
                    self.prefix.forget(last)  # held by this sequence alone: no longer the indexed content
                else:
                    new = self.allocator.allocate()
                    self.k[:, :, new], self.v[:, :, new] = self.k[:, :, last], self.v[:, :, last]
                    self.allocator.free([last], keep_cached)
                    self.tables[s][-1] = new

    def stats(self, bytes_per_token: float) -> KVStats:
        """Reserved = whole blocks held by live sequences; used = their tokens."""
        reserved = sum(len(t) for t in self.tables.values()) * self.block_size
        return KVStats(reserved, sum(self.lens.values()), bytes_per_token)


class VarlenPagedCache(PagedCache):
    """A PagedCache whose forward pass carries a different number of new tokens per sequence, flattened into one
    row (1, T = Σ counts): decode sequences add 1 token, prefilling ones a chunk of their prompt. The projections
    and MLP then run one matmul per layer for all of them; attention runs per sequence over its own blocks.
    `select_varlen(ids, counts)` sets up such a pass; `select(ids)` a (B, T) pass, run as PagedCache runs it."""

    counts: list[int] | None = None  # None: select()ed, a (B, T) pass as PagedCache runs it

    def select(self, seq_ids: list) -> VarlenPagedCache:
        super().select(seq_ids)
        self.counts = None
        return self

    def select_varlen(self, seq_ids: list, counts: list[int]) -> VarlenPagedCache:
        if len(seq_ids) != len(counts) or any(c <= 0 for c in counts):
            raise ConfigError(f"select_varlen needs one positive count per sequence, got {counts} for {seq_ids}")
        self.select(seq_ids)
        self.counts = list(counts)
        return self

    def begin(self, T: int) -> torch.Tensor:
        if self.counts is None:
            return super().begin(T)
        if T != sum(self.counts):
            raise ConfigError(f"VarlenPagedCache: a pass of {T} tokens, but the selected counts sum to "
                              f"{sum(self.counts)}")
        bs = self.block_size
        for s, c in zip(self.seq_ids, self.counts):
            if self.lens[s] + c > self.max_seq_len:
                raise ConfigError(f"sequence {s!r}: {self.lens[s] + c} tokens exceed the context {self.max_seq_len}")
        need = sum(self.blocks_needed(s, c) for s, c in zip(self.seq_ids, self.counts))
        if need > self.allocator.n_free:
            raise CacheFull(f"VarlenPagedCache: {need} more blocks needed, {self.allocator.n_free} free")
        segs, slots, positions, start = [], [], [], 0
        for s, c in zip(self.seq_ids, self.counts):
            for _ in range(self.blocks_needed(s, c)):
                self.tables[s].append(self.allocator.allocate())
            pos = self.lens[s] + torch.arange(c)  # (c,)
            table = torch.tensor([self.tables[s]])  # (1, nb)
            slots.append(table[0][pos // bs] * bs + pos % bs)  # (c,) flat slots of the new tokens
            segs.append((start, start + c, table, _visible(pos[None], table.shape[1] * bs)))  # mask (1, c, nb*bs)
            positions.append(pos)
            start += c
        self._step = (torch.cat(slots), segs)
        return torch.cat(positions)[None]  # (1, T)

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if self.counts is None:
            return super().attend(layer, q, k, v)
        slots, segs = self._step  # q: (1, H, T, hd); k, v: (1, H_kv, T, hd)
        kp, vp = self.k[layer], self.v[layer]  # (H_kv, N, bs, hd)
        _write(kp, slots, self.block_size, k[0].transpose(0, 1))  # (T, H_kv, hd) into their slots
        _write(vp, slots, self.block_size, v[0].transpose(0, 1))
        return torch.cat([self.kernel(q[:, :, a:b], kp, vp, table, mask) for a, b, table, mask in segs], 2)

    def commit(self, T: int) -> None:
        if self.counts is None:
            return super().commit(T)
        for s, c in zip(self.seq_ids, self.counts):
            self.lens[s] += c
        self._step = None
        self._index()


def kv_bytes_per_token(args: ModelArgs, dtype: torch.dtype = torch.float32) -> int:
    """K and V for one token: 2 x layers x kv_heads x head_dim x bytes."""
    return 2 * args.n_layers * args.n_kv_heads * args.head_dim * torch.empty(0, dtype=dtype).element_size()
