"""effml.study on the user's own trained model: a small CNN trained on sklearn's digits (seconds)."""

import math
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from effml.errors import ConfigError
from effml.study.plans import USER_PLANS, UserPlan, add_plan, model_kinds, select
from effml.study.user import Metric, direction, read_metrics, study

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples" / "user_cnn"))
import digits_cnn  # noqa: E402  (the example's user-side module)

WIDTH = 8
# DigitsCNN(width=8) parameters: conv 1->8 (3x3) 72+8, conv 8->16 1152+16, conv 16->16 2304+16,
# linear 64->64 4096+64, linear 64->10 640+10 = 8378; fp32: 33,512 bytes
PARAMS = 8378


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    model = digits_cnn.DigitsCNN(WIDTH)
    digits_cnn.finetune(model, 150)
    return model.eval()


@pytest.fixture(scope="module")
def data():
    return digits_cnn.example_inputs(32), digits_cnn.calibration()


def test_metric_directions():
    assert direction("accuracy") is True
    assert direction("val_loss") is False  # last part: loss
    assert direction("perplexity") is False
    assert direction("top1-acc") is True  # first part: top1
    assert direction("zork", {"zork": False}) is False
    with pytest.raises(ConfigError, match="'zork'.*Metric\\('zork'"):
        direction("zork")
    with pytest.raises(ConfigError, match="higher_is_better"):
        Metric("x", "yes")


def test_read_metrics():
    assert read_metrics(0.5, "e") == {"metric": 0.5}
    assert read_metrics({"f1": torch.tensor(0.25)}, "e") == {"f1": 0.25}
    with pytest.raises(ConfigError, match="metric 'f1' is nan"):
        read_metrics({"f1": math.nan}, "evaluate(x)")
    with pytest.raises(ConfigError, match="returned str"):
        read_metrics("good", "evaluate(x)")


def test_model_kinds_and_selection(trained):
    from transformers import BertConfig, BertModel, GPT2Config, GPT2LMHeadModel

    assert model_kinds(trained) == {"conv", "linear"}
    gpt = GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=2, n_embd=16, vocab_size=50, n_positions=16))
    assert model_kinds(gpt) == {"linear", "heads", "blocks", "decoder"}
    bert = BertModel(BertConfig(num_hidden_layers=2, num_attention_heads=2, hidden_size=16, intermediate_size=32,
                                vocab_size=50))
    assert model_kinds(bert) == {"linear", "heads", "blocks"}
    sel = select(trained, ["prune-channel-30%", "int8-static", "kmeans-2b-qat", "weight-only-int4"], have=set())
    assert [p.name for p in sel.plans] == ["prune-channel-30%"]
    reasons = dict(sel.skipped)
    assert "needs calibration" in reasons["int8-static"]
    assert "needs train" in reasons["kmeans-2b-qat"]
    assert "causal LM" in reasons["weight-only-int4"]
    with pytest.raises(ConfigError, match="study plan 'nope'"):
        select(trained, ["nope"], have=set())


def test_user_plan_checked():
    with pytest.raises(ConfigError, match="applies_to"):
        UserPlan("x", (("prune", {"method": "fine", "sparsity": 0.5}),), ("gpu",))
    with pytest.raises(ConfigError, match="no field bitz"):
        UserPlan("x", (("quantize", {"method": "linear", "bitz": 8}),), ("conv",))
    with pytest.raises(ConfigError, match="got a quantize config"):
        UserPlan("x", (("prune", {"method": "linear", "bits": 8}),), ("conv",))
    with pytest.raises(ValueError, match="registered twice"):
        add_plan(UserPlan("int8-static", (("quantize", {"method": "int8-static"}),), ("conv",)))


def test_model_that_does_not_run_is_named_before_work(trained, tmp_path):
    store = tmp_path / "runs.db"
    with pytest.raises(ConfigError, match=r"model DigitsCNN does not run on example_inputs \(Tensor\(2, 3\) "
                                          r"float32\): RuntimeError"):
        study(trained, digits_cnn.evaluate, example_inputs=torch.zeros(2, 3), store=store)
    assert not store.exists()  # refused before the store was made


def test_study_end_to_end(trained, data, tmp_path):
    x, calib = data
    base_acc = digits_cnn.evaluate(trained)["accuracy"]
    seen = []
    kw = dict(example_inputs=x, train=digits_cnn.finetune, calibration=calib, train_steps=20,
              plans=["prune-channel-50%", "int8-static", "kmeans-2b-qat", "weight-only-int4"], devices=("rpi5",),
              store=tmp_path / "runs.db", measure_budget_s=0.2, progress=lambda what, frac: seen.append(frac))
    res = study(trained, digits_cnn.evaluate, **kw)
    assert [r["name"] for r in res.rows] == ["baseline", "prune-channel-50%", "int8-static", "kmeans-2b-qat"]
    assert res.skipped == [("weight-only-int4", "applies to a causal LM (decoder); the model has convolutions, "
                                                "linear layers")]
    assert res.failed == [] and res.objective == "accuracy" and res.higher_is_better
    assert all(0 <= f <= 1 for f in seen) and seen
    base = res.row("baseline")
    assert base["metrics"]["accuracy"] == base_acc  # the model as given: not retrained
    assert base["model_bytes"] == base["resident_bytes"] == 4 * PARAMS
    # the forward's allocator peak holds at least conv2's output, (32, 16, 8, 8) fp32 = 131,072 bytes
    assert base["activation_peak_bytes"] >= 32 * 16 * 8 * 8 * 4
    for r in res.rows:  # peak memory measured for every variant: weights + the forward's allocator peak
        assert r["peak_mem_bytes"] == r["resident_bytes"] + r["activation_peak_bytes"] > 0
        assert r["speedup_measured"] > 0 and r["latency_p50_s"] > 0
        assert r["predictions"]["rpi5"]["latency_s"] > 0
    # int8 activations and weights: the int8 model holds less at its peak than the fp32 baseline
    assert res.row("int8-static")["peak_mem_bytes"] < base["peak_mem_bytes"]
    # 2-bit codes: 16x fewer bits than fp32 for the weights, plus codebooks and fp32 biases
    assert res.row("kmeans-2b-qat")["model_bytes"] < base["model_bytes"] / 8
    assert set(res.frontier) == {"latency", "size"} and res.frontier["size"]
    assert res.to_dict()["rows"][0]["name"] == "baseline"
    again = study(trained, digits_cnn.evaluate, **kw)  # resumed: every variant comes from the store
    assert again.done == [] and [r["name"] for r in again.rows] == [r["name"] for r in res.rows]
    assert [r["metrics"] for r in again.rows] == [r["metrics"] for r in res.rows]


def test_failed_variants_recorded_and_study_goes_on(trained, data, tmp_path):
    x, calib = data
    calls = {"n": 0}

    def flaky(model):  # the baseline, then: raises, NaN, fine
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("eval server down")
        return {"accuracy": math.nan if calls["n"] == 3 else digits_cnn.evaluate(model)["accuracy"]}

    res = study(trained, flaky, example_inputs=x, calibration=calib, store=tmp_path / "r.db", devices=(),
                plans=["prune-channel-30%", "prune-channel-50%", "int8-static"], measure_budget_s=0.2)
    assert res.failed == [("prune-channel-30%", "evaluating: RuntimeError: eval server down"),
                          ("prune-channel-50%", "evaluating: ConfigError: evaluate(prune-channel-50%): metric "
                                                "'accuracy' is nan (not a finite number)")]
    assert [r["name"] for r in res.rows] == ["baseline", "int8-static"]


def test_evaluate_raising_on_baseline_and_unknown_metric(trained, data, tmp_path):
    x, _ = data

    def bad(model):
        raise KeyError("labels")

    with pytest.raises(ConfigError, match="evaluate raised on the baseline model DigitsCNN: KeyError"):
        study(trained, bad, example_inputs=x, store=tmp_path / "a.db")
    with pytest.raises(ConfigError, match="metric 'zork'"):
        study(trained, lambda m: {"zork": 1.0}, example_inputs=x, store=tmp_path / "b.db")
    res = study(trained, lambda m: {"zork": 1.0}, example_inputs=x, store=tmp_path / "c.db", devices=(),
                metrics=[Metric("zork", False)], plans=["linear-8b"], measure_budget_s=0.2)
    assert res.higher_is_better is False and [r["name"] for r in res.rows] == ["baseline", "linear-8b"]


def test_user_registered_plan(trained, data, tmp_path):
    x, _ = data
    name = "test-fine-30%"
    if name not in USER_PLANS:
        add_plan(UserPlan(name, (("prune", {"method": "fine", "sparsity": 0.3}),), ("conv", "linear")))
    res = study(trained, digits_cnn.evaluate, example_inputs=x, plans=[name], store=tmp_path / "u.db", devices=(),
                measure_budget_s=0.2)
    row = res.row(name)
    assert row["chain"] == [{"technique": "prune", "config": {"method": "fine", "sparsity": 0.3}}]


def test_effml_study_is_callable_package():
    import effml

    assert callable(effml.study)
    import effml.study.pipeline  # the package keeps its modules

    assert effml.study.pipeline.run_study is not None
    assert isinstance(nn.Module, type)


def test_budget_leaves_the_rest_for_a_rerun(trained, data, tmp_path):
    x, _ = data
    kw = dict(example_inputs=x, plans=["linear-8b", "kmeans-4b"], store=tmp_path / "b.db", devices=(),
              measure_budget_s=0.2)
    first = study(trained, digits_cnn.evaluate, budget_s=1e-9, **kw)  # the baseline alone takes longer than that
    assert first.done == ["baseline"] and first.remaining == ["linear-8b", "kmeans-4b"]
    rest = study(trained, digits_cnn.evaluate, **kw)
    assert rest.done == ["linear-8b", "kmeans-4b"] and rest.remaining == []


def test_search_per_channel_group(trained, data, tmp_path):
    from effml.study.search import search

    x, calib = data
    res = search(trained, digits_cnn.evaluate, trials=3, per_group=True, example_inputs=x, calibration=calib,
                 plans=["prune-channel-50%+int8"], store=tmp_path / "s.db", devices=(), measure_budget_s=0.2)
    searched = [r for r in res.rows if r["name"].startswith("search:")]
    assert 1 <= len(searched) <= 3 and res.done[:2] == ["baseline", "prune-channel-50%+int8"]
    groups = ["features.0", "features.2", "features.5", "head.1"]  # DigitsCNN's channel groups, graph order
    for r in searched:
        prune = r["chain"][0]["config"] if r["chain"][0]["technique"] == "prune" else None
        if prune is not None:
            assert prune["method"] == "channel" and list(prune["per_layer"]) == groups
            ratios = "/".join(str(round(100 * prune["per_layer"][g])) for g in groups)
            assert r["name"].startswith(f"search:channel-{ratios}%")


def test_train_after_post_training_quantization(trained, data, tmp_path):
    from effml.study.plans import apply_plan

    x, _ = data
    calls = []

    def train(model, steps):  # records what it was given: the steps and whether the model is int8 already
        calls.append((steps, any("quantized" in type(m).__module__ for m in model.modules())))

    plan = USER_PLANS.get("int8-dynamic")
    apply_plan(plan, trained, example_inputs=(x,), train=train, train_steps=7)
    assert calls == []  # by default a post-training quantization step is not fine-tuned
    out = apply_plan(plan, trained, example_inputs=(x,), train=train, train_steps=7, train_quantized=True)
    assert calls == [(7, True)]  # once, after the step, on the model with its int8 Linear layers
    assert out.model is not trained  # a copy: the baseline is untouched
    with pytest.raises(ConfigError, match="train_quantized must be True or False and needs train="):
        study(trained, digits_cnn.evaluate, example_inputs=x, train_quantized=True, store=tmp_path / "r.db")
