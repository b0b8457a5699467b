"""`effml scale`: --json prints exactly one object; errors are one line; plots are written as files."""

import json
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from effml.cli import main
from effml.scaling import get_law


def run_json(capsys, *argv):
    assert main(["scale", *argv, "--json"]) == 0
    out = capsys.readouterr().out
    return json.loads(out)  # the whole of stdout must be one JSON object


def test_compute_json(capsys):
    d = run_json(capsys, "--compute", "5.76e23")
    # closed form, rounded constants: N = 1.3447·(9.6e22)^0.45161 = 3.219e10, D = C/(6N) = 2.982e12
    assert d["optimal"]["params"] == pytest.approx(3.219e10, rel=1e-3)
    assert d["optimal"]["tokens"] == pytest.approx(2.982e12, rel=1e-3)
    # the 20-tokens rule beside it: N = sqrt(5.76e23/120) = 6.928e10 (Table 3 lists 67B for this budget)
    assert d["rule_of_thumb"]["params"] == pytest.approx(6.928e10, rel=1e-3)
    assert d["law"]["name"] == "chinchilla" and d["mode"] == "budget"


def test_params_json_with_besiroglu(capsys):
    d = run_json(capsys, "--params", "7e9", "--law", "besiroglu")
    law = get_law("besiroglu")
    assert d["optimal"]["tokens"] == pytest.approx(law.tokens_for_params(7e9), rel=1e-12)
    assert d["optimal"]["compute"] == pytest.approx(6 * 7e9 * law.tokens_for_params(7e9), rel=1e-12)


def test_budget_usd_on_h100(capsys):
    from effml import hardware  # part of effml: broken means failed, never skipped

    dev = hardware.get_device("h100")
    d = run_json(capsys, "--budget-usd", "1e6", "--hw", "h100", "--mfu", "0.4")
    # FLOPs = $1e6 / ($/h) · 3600 · peak_bf16 · 0.4  (≈ 4.77e23 at $2.99/h and 989.5 TFLOP/s)
    assert d["budget"]["flops"] == pytest.approx(1e6 / dev.price_per_hour * 3600 * dev.peak_flops("bf16") * 0.4)
    assert d["budget"]["usd"] == pytest.approx(1e6)


def test_rich_table_by_default(capsys):
    assert main(["scale", "--compute", "1e21"]) == 0
    out = capsys.readouterr().out
    assert "law closed form" in out and "20-tokens-per-param" in out


@pytest.mark.parametrize("argv, message", [
    (["--compute", "-1"], "argument --compute: must be a finite number > 0, got '-1'"),
    (["--compute", "0"], "argument --compute: must be a finite number > 0, got '0'"),
    (["--compute", "nan"], "argument --compute: must be a finite number, got 'nan'"),
    (["--compute", "1e21", "--mfu", "0.5"], "--mfu does not apply without --hw"),
    (["--compute", "1e21", "--bootstrap", "5"], "--bootstrap does not apply without --fit"),
    (["--compute", "1e21", "--hw", "h100", "--mfu", "1.5"], "argument --mfu: must be a fraction in (0, 1]"),
    (["--compute", "1e21", "--hw", "h100", "--price-per-hour", "-2"], "argument --price-per-hour: must be a"),
    (["--compute", "1e21", "--hw", "h100", "tpu9"], "--hw: unknown device 'tpu9'"),
    (["--budget-usd", "1e6"], "need --hw"),
    (["--compute", "1e21", "--law", "kaplan"], "unknown scaling law 'kaplan'"),
])
def test_errors_are_one_line(capsys, argv, message):
    assert main(["scale", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and err.startswith("effml scale: error:")


def _write_runs(path, noise=0.005, seed=0):
    law = get_law("chinchilla")
    N, D = (x.ravel() for x in np.meshgrid(np.geomspace(1e7, 1e10, 6), np.geomspace(1e9, 1e12, 6)))
    L = law.loss(N, D) * np.exp(np.random.default_rng(seed).normal(0, noise, N.size))
    path.write_text("params,tokens,loss\n" + "".join(f"{n},{d},{l}\n" for n, d, l in zip(N, D, L)))


def test_fit_json_and_reuse_of_the_fitted_law(tmp_path, capsys):
    runs = tmp_path / "runs.csv"
    _write_runs(runs)
    d = run_json(capsys, "--fit", str(runs), "--bootstrap", "5", "--starts", "8")
    # 36 points with 0.5% noise: sd(α̂) ≈ 0.007 (see test_fit), so ±0.03 is > 4 sd
    assert d["law"]["alpha"] == pytest.approx(0.34, abs=0.03) and d["law"]["beta"] == pytest.approx(0.28, abs=0.03)
    assert d["n_runs"] == 36 and set(d["intervals"]) >= {"alpha", "beta", "a"}
    law_file = tmp_path / "mylaw.json"
    law_file.write_text(json.dumps(d))
    again = run_json(capsys, "--compute", "1e21", "--law", str(law_file))
    assert again["law"]["alpha"] == pytest.approx(d["law"]["alpha"]) and again["law"]["name"] == "mylaw"


def test_fit_csv_missing_columns_is_one_line(tmp_path, capsys):
    runs = tmp_path / "runs.csv"
    runs.write_text("params,loss\n1e8,3.0\n")
    assert main(["scale", "--fit", str(runs)]) == 2
    err = capsys.readouterr().err
    assert "missing column(s) tokens" in err and len(err.strip().splitlines()) == 1


def test_fit_with_too_few_runs(tmp_path, capsys):
    runs = tmp_path / "runs.csv"
    runs.write_text("params,tokens,loss\n1e8,1e9,3\n1e9,1e9,2.8\n1e8,1e10,2.9\n")
    assert main(["scale", "--fit", str(runs)]) == 2
    assert "cannot determine the 5 parameters" in capsys.readouterr().err


@pytest.mark.parametrize("suffix", [".svg", ".html"])
def test_plot_files(tmp_path, capsys, suffix):
    out = tmp_path / f"plots{suffix}"
    d = run_json(capsys, "--compute", "1e22", "--plot", str(out))
    assert d["plot"] == str(out) and out.is_file()
    text = out.read_text()
    svg = text if suffix == ".svg" else text[text.index("<body>"):text.rindex("</body>") + 7]
    root = ET.fromstring(svg)  # well-formed XML
    ns = "{http://www.w3.org/2000/svg}"
    # isoFLOP figure: 6 curves (one per C) + frontier: 2 laws × (N, D) + 2 rule lines = 10 polylines in all
    assert len(root.findall(f".//{ns}polyline")) >= (10 if suffix == ".svg" else 6)
    assert "IsoFLOP curves" in text and "Compute-optimal frontier" in text


def test_plot_with_fit_adds_the_runs_figure(tmp_path, capsys):
    runs = tmp_path / "runs.csv"
    _write_runs(runs)
    out = tmp_path / "fit.svg"
    run_json(capsys, "--fit", str(runs), "--bootstrap", "0", "--starts", "4", "--plot", str(out))
    text = out.read_text()
    assert "Runs and fitted law" in text and text.count("<circle") >= 36


def test_plot_bad_suffix(tmp_path, capsys):
    assert main(["scale", "--compute", "1e22", "--plot", str(tmp_path / "x.png")]) == 2
    assert "must end in .svg or .html" in capsys.readouterr().err
