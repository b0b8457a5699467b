"""Held-out prompts: chat templates x topics, and grounded tasks on KJV passages (one verse or several)."""

import pytest

from effml.errors import ConfigError
from effml.llm.prompts import GROUNDED_TEMPLATES, TOPICS, grounded_prompts, prompts
from effml.zoo.text import kjv_chapters


def _passage(task: str) -> str:
    return task.split("\n\n", 1)[1]


def test_grounded_passages_are_consecutive_verses_within_the_length_bounds():
    chapters = [c.split("\n") for i, c in enumerate(kjv_chapters()) if i % 10 == 9]  # the eval split's chapters
    for verses, lo, hi in ((1, 80, 240), (4, 350, 700)):
        tasks = grounded_prompts("eval", 4, seed=1, min_chars=lo, max_chars=hi, verses=verses)
        assert len(tasks) == 4
        for k, task in enumerate(tasks):
            assert task.startswith(GROUNDED_TEMPLATES[k % len(GROUNDED_TEMPLATES)].split("{p}")[0])
            p = _passage(task)
            assert lo <= len(p) <= hi
            # the passage is `verses` lines in a row of one eval chapter
            assert any(" ".join(lines[i:i + verses]) == p for lines in chapters
                       for i in range(len(lines) - verses + 1))


def test_one_verse_tasks_are_the_ones_the_benchmarks_quote():
    # verses=1 keeps the draws of the single-verse tasks (the speculative benchmark's grounded set)
    assert _passage(grounded_prompts("eval", 1, seed=1)[0]).startswith("Cursed be he that lieth with his sister")


def test_bad_requests_are_named():
    with pytest.raises(ConfigError, match="verses >= 1"):
        grounded_prompts("eval", 1, verses=0)
    with pytest.raises(ConfigError, match="found 0 of 2 passages of 2 verses and 5000-6000 characters"):
        grounded_prompts("eval", 2, verses=2, min_chars=5000, max_chars=6000)
    with pytest.raises(ConfigError, match="prompt split 'test'"):
        grounded_prompts("test", 1)
    assert len(set(prompts("eval"))) == len(prompts("eval")) and set(TOPICS) == {"train", "eval"}
