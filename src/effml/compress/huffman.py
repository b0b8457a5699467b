"""Huffman coding of quantized indices (Deep Compression, sec. 4): a prefix code from symbol frequencies.

`HuffmanCode.build(symbols)` makes the code; `encode` gives the bit string, `decode` reads it back,
`bits(symbols)` is the coded length without building the string. The table itself is counted in
`table_bits`: one (symbol, code length) pair per symbol - a canonical Huffman code is rebuilt from the
lengths alone.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections import Counter
from dataclasses import dataclass

from effml.errors import ConfigError


def frequencies(symbols) -> Counter:
    """symbol -> count; a torch tensor is counted with torch.unique (fast for 10^5-10^7 symbols)."""
    if hasattr(symbols, "reshape") and hasattr(symbols, "unique"):
        values, counts = symbols.reshape(-1).unique(return_counts=True)
        return Counter(dict(zip(values.tolist(), counts.tolist())))
    return Counter(int(s) for s in symbols)


@dataclass(frozen=True)
class HuffmanCode:
    codes: dict[int, str]  # symbol -> bit string

    @classmethod
    def build(cls, symbols) -> HuffmanCode:
        freq = frequencies(symbols)
        if not freq:
            raise ConfigError("Huffman coding needs at least one symbol")
        if len(freq) == 1:
            return cls({next(iter(freq)): "0"})  # one symbol still needs one bit per occurrence
        tie = itertools.count()  # deterministic ties: insertion order
        heap = [(n, next(tie), {s: ""}) for s, n in sorted(freq.items())]
        heapq.heapify(heap)
        while len(heap) > 1:
            n1, _, a = heapq.heappop(heap)
            n2, _, b = heapq.heappop(heap)
            merged = {s: "0" + c for s, c in a.items()} | {s: "1" + c for s, c in b.items()}
            heapq.heappush(heap, (n1 + n2, next(tie), merged))
        return cls(heap[0][2])

    def bits(self, symbols) -> int:
        freq = frequencies(symbols)
        missing = set(freq) - set(self.codes)
        if missing:
            raise ConfigError(f"symbols {sorted(missing)[:5]} are not in the Huffman code")
        return sum(n * len(self.codes[s]) for s, n in freq.items())

    def encode(self, symbols) -> str:
        return "".join(self.codes[int(s)] for s in symbols)

    def decode(self, bits: str) -> list[int]:
        inverse = {c: s for s, c in self.codes.items()}
        out, cur = [], ""
        for b in bits:
            cur += b
            if cur in inverse:
                out.append(inverse[cur])
                cur = ""
        if cur:
            raise ConfigError("Huffman bit string ends inside a code word")
        return out

    def table_bits(self, symbol_bits: int) -> int:
        """Bits to store the code: per symbol its value and its code length (5 bits: lengths up to 31)."""
        return len(self.codes) * (symbol_bits + 5)

    def average_length(self, symbols) -> float:
        n = sum(frequencies(symbols).values())
        return self.bits(symbols) / n if n else 0.0


def entropy_bits(symbols) -> float:
    """Shannon entropy x count: the lower bound any prefix code meets within 1 bit per symbol."""
    freq = frequencies(symbols)
    n = sum(freq.values())
    return -sum(c * math.log2(c / n) for c in freq.values()) if n else 0.0
