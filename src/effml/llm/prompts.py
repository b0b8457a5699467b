"""Instruction prompts for SmolLM2, generated from templates (a documented process, not a data set).

There is no instruction data set on this machine, so prompts are built deterministically:
  - `prompts`: open-ended chat, every template filled with every topic. Topics are split in two disjoint lists:
    `split="train"` prompts feed the draft's distillation (the target answers them), `split="eval"` prompts
    (topics the draft never saw) are what the tests, benchmarks and the serving trace use.
  - `grounded_prompts`: input-grounded tasks (repeat, correct, quote-and-explain a passage) whose answers
    largely copy the input, as in editing, retrieval-augmented answers or code edits. Passages are King James
    Bible verses (effml.zoo.text), train/eval from the corpus's own disjoint chapter split.

    prompts("eval", n=16, seed=0)            # 16 distinct prompts on held-out topics
    grounded_prompts("eval", n=8, seed=0)    # 8 tasks on verses from held-out chapters
"""

from __future__ import annotations

import random

from effml.errors import ConfigError

TEMPLATES = (
    "Explain {t} in simple terms.",
    "Write a short paragraph about {t}.",
    "What are three interesting facts about {t}?",
    "Give me a brief history of {t}.",
    "Why is {t} important?",
    "Describe {t} to a ten-year-old.",
    "List the main ideas behind {t}.",
    "Write a short poem about {t}.",
    "What are the pros and cons of {t}?",
    "Summarize what you know about {t} in a few sentences.",
    "How would you teach a beginner about {t}?",
    "Write a short story that involves {t}.",
    "What questions do people often ask about {t}?",
    "Compare {t} with something similar and explain the difference.",
    "Give some practical tips related to {t}.",
    "What is a common misconception about {t}?",
)

_TOPICS = (
    "the ocean", "volcanoes", "photosynthesis", "the moon", "honey bees", "the Roman Empire", "electricity",
    "gravity", "the water cycle", "climate change", "the human heart", "dinosaurs", "the internet",
    "recycling", "rainforests", "black holes", "the printing press", "vaccines", "chess", "coffee",
    "the piano", "democracy", "earthquakes", "solar energy", "the Great Wall of China", "penguins",
    "sleep", "friendship", "mathematics", "the alphabet", "bicycles", "trains", "bread baking",
    "the Olympic Games", "glaciers", "deserts", "the solar system", "magnets", "rainbows", "dolphins",
    "the immune system", "ancient Egypt", "libraries", "gardening", "exercise", "music", "painting",
    "the stock market", "money", "airplanes", "robots", "computers", "smartphones", "the brain",
    "the Renaissance", "the French Revolution", "wind power", "forests", "rivers", "mountains",
    "tea", "chocolate", "spiders", "butterflies", "whales", "elephants", "the Amazon river", "Mars",
    "the Sun", "stars", "the seasons", "weather forecasting", "languages", "poetry", "theater",
    "photography", "cooking", "nutrition", "meditation", "the pyramids", "castles", "knights",
    "the Vikings", "bridges", "skyscrapers", "cars", "electric vehicles", "batteries", "plastic",
    "glass", "paper", "soap", "salt", "sugar", "water", "fire", "the wheel", "clocks", "maps",
    "the compass", "the telescope", "the microscope", "DNA", "evolution", "fossils", "bacteria",
    "viruses", "the periodic table", "atoms", "light", "sound", "rain", "snow", "lightning",
    "hurricanes", "tides", "coral reefs", "sharks", "owls", "wolves", "cats", "dogs", "horses",
    "farming", "cities", "villages", "schools", "teachers", "homework", "reading", "writing",
    "storytelling", "mythology", "fairy tales", "superheroes", "video games", "board games", "football",
    "tennis", "swimming", "running", "yoga", "kindness", "patience", "curiosity", "courage",
)
# every 5th topic is held out for evaluation (the draft never trains on it)
TOPICS = {"train": tuple(t for i, t in enumerate(_TOPICS) if i % 5 != 4),
          "eval": tuple(t for i, t in enumerate(_TOPICS) if i % 5 == 4)}


def prompts(split: str = "eval", n: int | None = None, seed: int = 0) -> list[str]:
    """`n` distinct prompts (all if None) from templates x topics of `split`, shuffled with `seed`."""
    if split not in TOPICS:
        raise ConfigError(f"prompt split {split!r} is not one of {', '.join(TOPICS)}")
    allp = [tpl.format(t=t) for t in TOPICS[split] for tpl in TEMPLATES]
    random.Random(seed).shuffle(allp)
    if n is not None and not 0 < n <= len(allp):
        raise ConfigError(f"asked for {n} prompts; split {split!r} has {len(allp)}")
    return allp[:n]


GROUNDED_TEMPLATES = (
    "Repeat the following text exactly:\n\n{p}",
    "Correct any spelling or punctuation mistakes in this text and write it out in full:\n\n{p}",
    "Quote this verse, then explain it in one sentence:\n\n{p}",
    "Copy this passage and put a title above it:\n\n{p}",
)


def grounded_prompts(split: str = "eval", n: int = 8, seed: int = 0, min_chars: int = 80,
                     max_chars: int = 240, verses: int = 1) -> list[str]:
    """`n` grounded tasks on passages of `verses` consecutive KJV verses, `min_chars`..`max_chars` characters in
    all, from the split's chapters (one verse: a short task; several: a document-length one)."""
    from effml.zoo.text import kjv_chapters

    if split not in TOPICS:
        raise ConfigError(f"prompt split {split!r} is not one of {', '.join(TOPICS)}")
    if verses < 1 or not 0 < min_chars <= max_chars:
        raise ConfigError(f"grounded_prompts needs verses >= 1 and 0 < min_chars <= max_chars, got {verses}, "
                          f"{min_chars}, {max_chars}")
    every = 10  # effml.zoo.text.kjv_corpus: chapter i is validation when i % 10 == 9
    chapters = [c for i, c in enumerate(kjv_chapters()) if (i % every == every - 1) == (split == "eval")]
    rng = random.Random(seed)
    out: list[str] = []
    for _ in range(1000 * n):  # draws; a bound a passage length nothing in the split meets cannot hang on
        if len(out) == n:
            break
        lines = rng.choice(chapters).split("\n")
        runs = [" ".join(lines[i:i + verses]) for i in range(len(lines) - verses + 1)]
        runs = [r for r in runs if min_chars <= len(r) <= max_chars]
        if runs:
            out.append(GROUNDED_TEMPLATES[len(out) % len(GROUNDED_TEMPLATES)].format(p=rng.choice(runs)))
    if len(out) < n:
        raise ConfigError(f"found {len(out)} of {n} passages of {verses} verses and {min_chars}-{max_chars} "
                          f"characters in split {split!r}")
    return out
