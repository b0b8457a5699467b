"""The paged KV cache's blocks: who holds them (BlockAllocator) and which prompt prefixes they already hold
(PrefixIndex, automatic prefix caching as in vLLM and SGLang's radix cache).

A chat server's prompts share long prefixes: the system prompt and the template's header. A block full of prompt
tokens whose K/V are already in the pool need not be computed again: a new sequence whose prompt starts with the
same tokens takes those blocks into its block table (reference counted) and prefills only the rest. Only full
blocks are shared and a sequence only ever appends past its own length, so a shared block is never written;
`PagedCache.truncate` copies a shared block before a sequence writes into it again (copy on write).

A block's key is (its parent block, the parent's generation, its own tokens): the K/V of a token depend on every
token before it, so a block matches only under the very block that preceded it when it was computed. A block's
generation counts its allocations; when a freed cached block is reused for something else its key is dropped,
and the generation bump makes the keys of blocks that named it as their parent unreachable. Matching is exact
(tuple equality, no hash of the tokens standing in for them).
"""

from __future__ import annotations

from effml.errors import ConfigError, EffmlError


class CacheFull(EffmlError, RuntimeError):
    """No free block (paged) or no free slot (contiguous) for the tokens asked for."""


class BlockAllocator:
    """Fixed-size blocks from a free list, reference counted. LIFO: a just-freed, cache-warm block is reused first,
    except blocks that still hold a cached prefix: they go to the far end and are reused last."""

    def __init__(self, num_blocks: int):
        if num_blocks <= 0:
            raise ConfigError(f"BlockAllocator num_blocks must be positive, got {num_blocks}")
        self.num_blocks = num_blocks
        self.free_list = list(range(num_blocks - 1, -1, -1))
        self.refs = [0] * num_blocks  # sequences holding each block
        self.on_reuse = None  # called with a block about to be handed out again (PrefixIndex drops its key)

    @property
    def n_free(self) -> int:
        return len(self.free_list)

    def allocate(self) -> int:
        if not self.free_list:
            raise CacheFull(f"all {self.num_blocks} KV blocks are in use")
        b = self.free_list.pop()
        if self.on_reuse is not None:
            self.on_reuse(b)
        self.refs[b] = 1
        return b

    def share(self, b: int) -> None:
        """One more holder of block b (a cached block nobody held is taken off the free list)."""
        if self.refs[b] == 0:
            self.free_list.remove(b)
        self.refs[b] += 1

    def free(self, blocks: list[int], keep: frozenset | set | dict = frozenset()) -> None:
        """Drop one holder of each block; a block nobody holds any more is free (those in `keep`: reused last)."""
        for b in reversed(blocks):
            self.refs[b] -= 1
            if self.refs[b] == 0:
                if b in keep:
                    self.free_list.insert(0, b)
                else:
                    self.free_list.append(b)


class PrefixIndex:
    """Full prompt blocks in the pool, by (parent block, parent generation, tokens)."""

    ROOT = -1

    def __init__(self, allocator: BlockAllocator):
        self.allocator = allocator
        self.block_of: dict[tuple, int] = {}
        self.key_of: dict[int, tuple] = {}
        self.generation = [0] * allocator.num_blocks
        allocator.on_reuse = self.reused

    def _key(self, parent: int, tokens) -> tuple:
        return parent, (self.generation[parent] if parent != self.ROOT else 0), tuple(tokens)

    def reused(self, b: int) -> None:
        self.generation[b] += 1
        self.forget(b)

    def forget(self, b: int) -> None:
        key = self.key_of.pop(b, None)
        if key is not None:
            del self.block_of[key]

    def match(self, tokens: list[int], block_size: int, limit: int) -> list[int]:
        """The cached blocks holding tokens[:n], n <= limit a multiple of block_size, longest first found."""
        out, parent = [], self.ROOT
        for i in range(limit // block_size):
            b = self.block_of.get(self._key(parent, tokens[i * block_size:(i + 1) * block_size]))
            if b is None:
                break
            out.append(b)
            parent = b
        return out

    def add(self, table: list[int], tokens: list[int], block_size: int, start: int, end: int) -> None:
        """Index blocks start..end-1 of a sequence's table, full of tokens[i*bs:(i+1)*bs] (a block whose content
        is already indexed under another block stays private)."""
        for i in range(start, end):
            b = table[i]
            key = self._key(table[i - 1] if i else self.ROOT, tokens[i * block_size:(i + 1) * block_size])
            if key not in self.block_of and b not in self.key_of:
                self.block_of[key], self.key_of[b] = b, key
