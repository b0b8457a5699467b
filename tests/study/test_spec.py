"""`effml study --spec`: the user-side story end to end (a CNN trained and saved by the user, studied through
the spec file only), and the spec file's checks."""

import html
import json
import shutil
from pathlib import Path

import pytest
import torch

from effml.cli import main
from effml.errors import ConfigError
from effml.study.spec import load_spec, resolve

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "user_cnn"


def _spec(tmp_path, body: str) -> Path:
    p = tmp_path / "study.toml"
    p.write_text(body)
    return p


BASE = '''model = "digits_cnn:load"
evaluate = "digits_cnn:evaluate"
example_inputs = "digits_cnn:example_inputs"
'''


@pytest.fixture(scope="module")
def user_dir(tmp_path_factory):
    """What a user has: their module next to the spec, and a checkpoint they trained and saved."""
    d = tmp_path_factory.mktemp("user")
    shutil.copy(EXAMPLE / "digits_cnn.py", d / "digits_cnn.py")
    import importlib.util

    spec = importlib.util.spec_from_file_location("user_digits_cnn", d / "digits_cnn.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.train_and_save(d / "cnn.pt", steps=150, width=8)
    return d


def test_unknown_and_missing_keys(tmp_path):
    p = _spec(tmp_path, BASE + 'plan = ["int8-static"]\nbudjet = 3\n')
    with pytest.raises(ConfigError, match=r"unknown key\(s\) 'plan' \(did you mean 'plans'\?\), 'budjet' "
                                          r"\(did you mean 'budget'\?\)"):
        load_spec(p)
    with pytest.raises(ConfigError, match="missing key\\(s\\) evaluate, example_inputs"):
        load_spec(_spec(tmp_path, 'model = "digits_cnn:load"\n'))
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_spec(_spec(tmp_path, "model = \n"))
    with pytest.raises(ConfigError, match="'budget' 'soon' is not a duration"):
        load_spec(_spec(tmp_path, BASE + 'budget = "soon"\n'))
    with pytest.raises(ConfigError, match="'search' must be an integer >= 0"):
        load_spec(_spec(tmp_path, BASE + "search = -1\n"))
    with pytest.raises(ConfigError, match=r"\[metrics\] f2 = 'up'"):
        load_spec(_spec(tmp_path, BASE + '[metrics]\nf2 = "up"\n'))
    assert load_spec(_spec(tmp_path, BASE + 'budget = "8m"\n')).budget_s == 480.0  # 8 x 60 s
    with pytest.raises(ConfigError, match="'train_quantized' must be true or false, got 'yes'"):
        load_spec(_spec(tmp_path, BASE + 'train_quantized = "yes"\n'))
    assert load_spec(_spec(tmp_path, BASE + "train_quantized = true\n")).train_quantized is True


def test_callables_named_by_key(user_dir):
    p = _spec(user_dir, BASE.replace("digits_cnn:evaluate", "digits_cnn:evaluat") + '[model_args]\npath = "x"\n')
    with pytest.raises(ConfigError, match="evaluate: .*has no attribute 'evaluat'; did you mean evaluate"):
        resolve(load_spec(p))
    p = _spec(user_dir, BASE.replace("digits_cnn:example_inputs", "nomodule_here:inputs"))
    with pytest.raises(ConfigError, match="example_inputs: .*no module named 'nomodule_here'"):
        resolve(load_spec(p))


def _run_cli(user_dir, tmp_path, capsys, base: str, body: str) -> tuple[dict, Path, Path]:
    """`effml study --spec` on the saved CNN (width 8) with `body` added to the spec: (JSON result, store, report)."""
    spec = _spec(user_dir, base + body + f'''[model_args]
path = "{user_dir / 'cnn.pt'}"
width = 8
''')
    store, out = tmp_path / "runs.db", tmp_path / "report.html"
    assert main(["study", "--spec", str(spec), "--store", str(store), "--out", str(out), "--json"]) == 0
    return json.loads(capsys.readouterr().out), store, out


def test_cli_spec_end_to_end(user_dir, tmp_path, capsys):
    body = '''name = "digits"
train = "digits_cnn:finetune"
calibration = "digits_cnn:calibration"
plans = ["prune-channel-50%", "int8-static", "prune-channel-30%+int8"]
devices = ["rpi5"]
train_steps = 20
measure_budget_s = 0.2
search = 2
'''
    res, store, out = _run_cli(user_dir, tmp_path, capsys, BASE, body)
    names = [r["name"] for r in res["rows"]]
    assert names[:4] == ["baseline", "prune-channel-50%", "int8-static", "prune-channel-30%+int8"]
    searched = [n for n in names if n.startswith("search:")]
    assert 1 <= len(searched) <= 2  # two trials; one may propose an already measured point
    assert res["report"] == str(out) and out.stat().st_size > 0
    # the baseline is the saved model as loaded with weights_only=True: its accuracy is the user's own
    import importlib.util

    s = importlib.util.spec_from_file_location("u2", user_dir / "digits_cnn.py")
    mod = importlib.util.module_from_spec(s)
    s.loader.exec_module(mod)
    want = mod.evaluate(mod.load(str(user_dir / "cnn.pt"), width=8))["accuracy"]
    assert res["rows"][0]["metrics"]["accuracy"] == want
    assert all(r["peak_mem_bytes"] > 0 for r in res["rows"])
    # rerun: resumed from the store, nothing computed again
    again, _, _ = _run_cli(user_dir, tmp_path, capsys, BASE, body)
    assert again["done"] == [] and [r["name"] for r in again["rows"]] == names


def test_cli_refuses_default_study_flags_beside_spec(user_dir, tmp_path, capsys):
    spec = _spec(user_dir, BASE)
    assert main(["study", "--spec", str(spec), "--variants", "int8", "--store", str(tmp_path / "r.db")]) == 2
    assert "--variants do(es) not apply with --spec" in capsys.readouterr().err
    assert main(["study", "--spec", str(tmp_path / "none.toml"), "--store", str(tmp_path / "r.db")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert not (tmp_path / "r.db").exists()


def test_example_model_loads_weights_only(user_dir):
    state = torch.load(user_dir / "cnn.pt", weights_only=True)
    assert set(state) >= {"features.0.weight", "head.3.bias"}


NLL = '''import torch

from digits_cnn import SPLIT, _data


@torch.no_grad()
def evaluate(model):
    """Held-out negative log-likelihood: lower is better."""
    x, y = _data()
    return {"nll": torch.nn.functional.cross_entropy(model(x[SPLIT:]), y[SPLIT:]).item()}
'''


def test_cli_spec_report_for_a_lower_is_better_metric(user_dir, tmp_path, capsys):
    (user_dir / "digits_nll.py").write_text(NLL)
    res, store, out = _run_cli(user_dir, tmp_path, capsys, BASE.replace("digits_cnn:evaluate", "digits_nll:evaluate"),
                               '''name = "digits-nll"
plans = ["prune-channel-50%", "int8-static"]
devices = ["rpi5"]
measure_budget_s = 0.1
''')
    assert res["objective"] == "nll" and res["higher_is_better"] is False and res["report"] == str(out)
    page = out.read_text()
    assert '<th data-col="2">nll (lower is better)</th>' in page  # the table's metric column, named with direction
    assert '"text":"nll (lower is better)"' in page  # the Pareto chart's y-axis title
    # int8-static needs calibration, which the spec does not give: listed with the reason the plan gave
    reason = dict(res["skipped"])["int8-static"]
    assert f"<td>int8-static</td><td>skipped</td><td>{html.escape(reason)}</td>" in page
    # `effml report` rebuilds the same study from the store alone
    again = tmp_path / "again.html"
    assert main(["report", "--store", str(store), "--study", "digits-nll", "--out", str(again)]) == 0
    rebuilt = again.read_text()
    assert '<th data-col="2">nll (lower is better)</th>' in rebuilt
    assert "<td>int8-static</td><td>skipped</td>" in rebuilt
