"""Named models for `effml generate / serve-bench` and the benchmarks, and named drafts for a target.

    lm = load_model("smollm2-135m")                 # LoadedModel(name, model, tokenizer)
    draft = load_draft("smollm2-135m-draft", lm)    # distilled layer-subset draft (built once, cached)
    draft = load_draft("layers:0,1,29", lm)         # an untrained layer subset of the target
    draft = load_draft("lookup", lm)                # prompt lookup: no model, copies n-gram continuations
    draft = load_draft("self-int4", lm)             # the target itself in int4 weight-only (self-speculation)
    lm = load_model("tiny")                         # random-weight toy of the same architecture (tests, demos)
"""

from __future__ import annotations

from dataclasses import dataclass

from effml.errors import ConfigError
from effml.registries import Registry
from effml.zoo.text import CharTokenizer  # effml's one character tokenizer (CharTokenizer.ascii() here)


@dataclass(frozen=True)
class LoadedModel:
    name: str
    model: object  # effml.llm.model.Transformer
    tokenizer: object  # encode / chat / decode / eos_id / vocab_size


MODELS: Registry = Registry("model")
DRAFTS: Registry = Registry("draft")


model_entry = MODELS.register


draft_entry = DRAFTS.register


@model_entry("smollm2-135m")
def _smollm2() -> LoadedModel:
    from effml.llm.weights import load_smollm2

    model, tok = load_smollm2()
    return LoadedModel("smollm2-135m", model, tok)


def _tiny(name: str, seed: int) -> LoadedModel:
    from effml.llm.model import ModelArgs, build

    tok = CharTokenizer.ascii()
    return LoadedModel(name, build(ModelArgs.preset("tiny", vocab_size=tok.vocab_size), seed=seed, std=0.3), tok)


@model_entry("tiny")
def _tiny0() -> LoadedModel:
    return _tiny("tiny", 0)


@model_entry("tiny-draft")
def _tiny1() -> LoadedModel:
    return _tiny("tiny-draft", 1)


def load_model(name: str) -> LoadedModel:
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}; expected one of {', '.join(MODELS)}")
    return MODELS[name]()


@draft_entry("smollm2-135m-draft")
def _distilled(target: LoadedModel, progress=None):
    from effml.llm.draft import DraftConfig, load_or_build_draft

    if target.name != "smollm2-135m":
        raise ConfigError(f"draft smollm2-135m-draft is distilled from smollm2-135m, not {target.name!r}")
    return load_or_build_draft(target.model, target.tokenizer, DraftConfig(), progress)[0]


def load_draft(name: str, target: LoadedModel, progress=None):
    """A draft for `target`: a registered draft, `layers:i,j,..` (a layer subset), `lookup[:N]` (prompt lookup
    with n-grams up to N, default 3), `self-int4` / `self-int8` (a quantized copy of the target), a model name, or
    `lookup[:N]+DRAFT` (prompt lookup where the text repeats itself, DRAFT elsewhere: a LookupFirst)."""
    if "+" in name:
        from effml.llm.lookup import LOOKUP_FIRST_MIN_NGRAM, LookupFirst, PromptLookup

        first, _, rest = name.partition("+")
        lookup = load_draft(first, target, progress) if first == "lookup" or first.startswith("lookup:") else None
        model = load_draft(rest, target, progress) if rest and "+" not in rest else None
        if lookup is None or model is None or not hasattr(model, "layers"):
            raise ConfigError(f"draft {name!r}: expected lookup[:N]+DRAFT with DRAFT a model draft (e.g. "
                              f"lookup+self-int4)")
        # beside a model draft, a 1-token match is too weak a hint to skip the model (LookupFirst)
        return LookupFirst(model, PromptLookup(lookup.max_ngram, min(LOOKUP_FIRST_MIN_NGRAM, lookup.max_ngram)))
    if name == "lookup" or name.startswith("lookup:"):
        from effml.llm.lookup import PromptLookup

        try:
            n = int(name.removeprefix("lookup:")) if ":" in name else 3
        except ValueError:
            raise ConfigError(f"draft {name!r}: expected lookup or lookup:N with N the longest n-gram (e.g. lookup:3)")
        return PromptLookup(max_ngram=n)
    if name in ("self-int4", "self-int8"):
        import copy

        from effml.llm.engine import FormatConfig, check_unprepared, to_format

        check_unprepared(target.model, f"draft {name!r} (a quantized copy of the target)")
        draft = copy.deepcopy(target.model)
        to_format(draft, FormatConfig(name.removeprefix("self-")))
        return draft
    if name.startswith("layers:"):
        from effml.llm.draft import layer_subset

        try:
            layers = tuple(int(x) for x in name.removeprefix("layers:").split(","))
        except ValueError:
            raise ConfigError(f"draft {name!r}: expected layers:i,j,... with block indices (e.g. layers:0,1,29)")
        return layer_subset(target.model, layers)
    if name in DRAFTS:
        return DRAFTS[name](target, progress)
    if name in MODELS:
        return load_model(name).model
    raise ConfigError(f"unknown draft {name!r}; expected one of {', '.join([*DRAFTS, *MODELS])}, lookup[:N], "
                      f"self-int4, self-int8, layers:i,j,.. or lookup[:N]+DRAFT")
