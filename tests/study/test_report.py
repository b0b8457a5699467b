"""The HTML report: content from the runs, and the page rendered in real headless Chromium."""

import json
import os
from pathlib import Path

import pytest

from effml.hardware import predict
from effml.hardware.plot import roofline_figure
from effml.study import report
from effml.study.figures import pareto_data, pareto_figure, predicted_vs_measured
from effml.study.rows import ACCURACY, cost_axes, frontier_keys, headline, objective_of, report_rows
from effml.study.store import Run

from tests.study.conftest import make_runs

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]


def test_headline_and_frontier(runs):
    rows = report_rows(runs, ["h100"])
    # no speedup_measured in these runs: each row's own p50 is its latency on the frontier
    # measured latency frontier: student (0.8 ms, 88%), int8 (1.0 ms, 89.8%), baseline (2.0 ms, 90%);
    # prune-80% (1.5 ms, 89.5%) is beaten by int8 on both, 'bad' by everything
    assert frontier_keys(rows, "latency_beside_ms") == ["student", "int8", "baseline"]
    lines = headline(rows)
    # every fixture run predicts 0.9 × its measured p50 on 'local': |0.9 − 1| = 10% for each of the 5
    (div, fig), = predicted_vs_measured(rows, ["h100"])
    assert div == "predicted" and fig.layout.title.text.endswith("median |predicted/measured − 1| = 10% over 5 variants")
    # within 1 pt: int8 is the fastest (2.0/1.0 = 2×) and prune-80% the smallest (246824/60000 = 4.1×)
    assert lines[0].startswith("int8 is 4.0× smaller and 2.00× faster (measured) at -0.2 pt")
    assert lines[1].startswith("prune-80% is 4.1× smaller and 1.33× faster (measured) at -0.5 pt")


def _html(runs, lenet_profile):
    roof = roofline_figure({"h100": predict(lenet_profile, "h100", dtype="fp32")}, "roofline on h100")
    return report.render(runs, ["h100"], best_profile=lenet_profile, roofline=roof,
                         meta={"title": "test study", "best": "int8"})


def test_report_is_self_contained(runs, lenet_profile):
    page = _html(runs, lenet_profile)
    assert "<script src=" not in page and "<link" not in page  # nothing fetched: plotly.js is inlined
    assert "plotly.js" in page and len(page) > 3_000_000
    assert page.count('class="plotly-graph-div"') == 4  # pareto, layers, roofline, predicted-vs-measured
    for name in ("baseline", "prune-80%", "int8", "bad", "student"):
        assert f">{name}</td>" in page
    switch = json.loads(page.split("const SWITCH = ")[1].split(";\n")[0])
    assert set(switch) >= {"latency_beside_ms", "size_bytes", "flops", "pred_ms@h100", "energy_mj@h100", "usd_1m@h100"}


def test_report_renders_in_chromium(runs, lenet_profile, tmp_path):
    if not os.path.exists(CHROMIUM):
        if os.environ.get("CI"):
            pytest.fail("Debian's chromium is missing: .ci/run installs it")
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    path = report.write(tmp_path / "report.html", _html(runs, lenet_profile))
    errors = []
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(path.as_uri())
        page.wait_for_selector("#pareto svg.main-svg")
        for div in ("pareto", "layers", "roofline", "predicted"):
            assert page.locator(f"#{div} svg.main-svg").count() >= 1, f"chart {div} did not render"
        title = page.locator("#pareto .xtitle").text_content()
        assert title.startswith("latency, measured")
        # 5 points (<= 25): each labelled beside its marker; 'bad' (50% among 88-90%) pinned at the axis edge
        labels = page.locator("#pareto .textpoint text").all_text_contents()
        assert {"baseline", "prune-80%", "int8", "student", "bad: 50.0% ▼ (off the axis)"} <= set(labels)
        assert page.locator("#pareto .ytitle").text_content() == "accuracy (%, higher is better)"
        page.select_option("#cost-axis", "size_bytes")
        page.wait_for_function("document.querySelector('#pareto .xtitle').textContent.startsWith('model size')")
        xs = page.evaluate("document.getElementById('pareto').data[1].x")
        assert xs == [30_000, 60_000, 62_000, 246_824]  # size frontier: student, prune-80%, int8, baseline
        first = page.locator("#runs tbody tr td").first.inner_text()
        page.click("#runs th[data-col='2']")  # sort by accuracy, ascending: 'bad' first
        assert page.locator("#runs tbody tr td").first.inner_text() == "bad" != first or first == "bad"
        # the screenshot goes to tmp_path, or where EFFML_SCREENSHOT_DIR says (never into the source tree)
        shots = Path(os.environ.get("EFFML_SCREENSHOT_DIR") or tmp_path)
        shots.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(shots / "report_test.png"), full_page=True)
        browser.close()
    assert errors == []


# Store strings written to attack the page: each would run a script (or open a dialog) if it reached the HTML
# raw, in markup or inside the <script> that holds the cost-axis switch.
HOSTILE = ["</script><script>window.__pwned=1</script>", '<img src=x onerror="window.__pwned=2;alert(2)">',
           "\"'><svg onload=window.__pwned=3>", "<!--<script>window.__pwned=4//", "a\u2028b\u2029c & d"]


def _hostile_store(path, runs, lenet_profile):
    from effml.study.store import Store

    study = "</title><script>window.__pwned=5</script>"
    with Store(path) as store:
        for i, run in enumerate(runs):
            run.study, run.name = study, HOSTILE[i]
            run.key = f"{HOSTILE[i]}@fp"
            run.predictions = {**run.predictions, HOSTILE[(i + 1) % 5]: run.predictions["h100"]}
            run.chain = [{"technique": HOSTILE[(i + 2) % 5], "config": {}}] if run.chain else []
            run.machine = {HOSTILE[3]: HOSTILE[0]}
            store.put(run)
        best = next(r for r in store.runs(study) if r.metrics["accuracy"] == 0.898)  # int8: fastest within 1 pt
        store.put_artifact(study, f"profile:{best.key}", json.dumps(lenet_profile.to_dict(events=True)).encode())
    return study


def test_hostile_store_strings_run_no_script(runs, lenet_profile, tmp_path):
    if not os.path.exists(CHROMIUM):
        if os.environ.get("CI"):
            pytest.fail("Debian's chromium is missing: .ci/run installs it")
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    from effml.cli import main

    db, out = tmp_path / "runs.db", tmp_path / "report.html"
    study = _hostile_store(db, runs, lenet_profile)
    assert main(["report", "--store", str(db), "--study", study, "--out", str(out)]) == 0
    page_text = out.read_text()
    assert "</script><script>" not in page_text.split("<body>")[1].replace("</script>\n<script>", "")
    dialogs, errors = [], []
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(out.as_uri())
        page.wait_for_selector("#pareto svg.main-svg")
        assert page.evaluate("typeof window.__pwned") == "undefined" and dialogs == []  # nothing ran on load
        assert page.locator("#roofline svg.main-svg").count() >= 1  # the roofline on h100, the best variant's
        # every hostile device is a cost axis: switching to one runs the SWITCH script with its label
        page.select_option("#cost-axis", f"pred_ms@{HOSTILE[1]}")
        page.wait_for_function("document.querySelector('#pareto .xtitle').textContent.includes('onerror')")
        assert page.locator("#pareto .xtitle").text_content() == f"predicted latency on {HOSTILE[1]} (ms)"
        names = [td.inner_text() for td in page.locator("#runs tbody tr td:first-child").all()]
        options = page.locator("#cost-axis option").all_text_contents()
        title = page.locator("h1").inner_text()
        pwned = page.evaluate("typeof window.__pwned")
        browser.close()
    assert pwned == "undefined" and dialogs == [] and errors == []
    assert title == f"effml study '{study}'"  # shown as text
    assert sorted(n.replace("\u2028", "").replace("\u2029", "") for n in names) == sorted(
        h.replace("\u2028", "").replace("\u2029", "") for h in HOSTILE)  # inner_text may drop the separators
    for dev in HOSTILE:
        assert f"predicted latency on {dev} (ms)" in options


def test_store_strings_are_not_terminal_markup(runs, tmp_path, capsys):
    from effml.cli import main
    from effml.study.store import Store

    with Store(tmp_path / "runs.db") as store:
        for run in runs:
            run.study, run.key = "default", f"{run.key}@fp"
            run.name = {"int8": "[/oops] [bold]int8"}.get(run.name, run.name)
            store.put(run)
    assert main(["report", "--store", str(tmp_path / "runs.db"), "--out", str(tmp_path / "r.html")]) == 0
    assert "[/oops] [bold]int8 is 4.0× smaller" in capsys.readouterr().out  # printed as text (rich would raise)


def _user_run(name, value, p50, speedup=None, size=400_000, objective="perplexity", up=False, **extra):
    chain = [] if name == "baseline" else [{"technique": "quantize", "config": {}}]
    return Run("u", f"{name}@fp", name, chain, {
        "status": "ok", "objective": objective, "metrics": {objective: value}, "directions": {objective: up},
        "model_bytes": size, "latency_p50_s": p50, "speedup_measured": speedup, **extra})


def _page_figure(runs, objective=None):
    rows = [r for r in report_rows(runs, [], objective) if r["status"] == "ok"]
    axes = cost_axes([])[:2]
    front = {a.name: frontier_keys(rows, a.name, objective) for a in axes}
    return pareto_figure(pareto_data(rows, axes, front, objective), objective, axes[0].name)


def test_broken_variant_does_not_squash_the_axis():
    acc = [("baseline", 0.90), ("a", 0.91), ("b", 0.89), ("c", 0.88), ("broken", 0.21)]
    runs = [Run("t", n, n, [] if n == "baseline" else [{"technique": "prune", "config": {}}],
                {"accuracy": v, "model_bytes": 1000, "latency_p50_s": 1e-3, "speedup_measured": 1.1}) for n, v in acc]
    fig = _page_figure(runs, ACCURACY)
    # distances from 90: 0, 1, 1, 2, 69 pt; 75th percentile (4th of 5) 2 pt -> window 90 ± max(4 × 2, 5) = [82, 98];
    # in it 88..91, pad 5% of 3 = 0.15 -> axis [88 - 0.3, 91 + 0.3]; without 'broken' the same axis
    assert list(fig.layout.yaxis.range) == pytest.approx([87.7, 91.3])
    assert list(_page_figure(runs[:4], ACCURACY).layout.yaxis.range) == pytest.approx([87.7, 91.3])
    off = fig.data[2]  # pinned at 88 - 0.15 with its value in the label
    assert off.text == ("broken: 21.0% ▼ (off the axis)",) and off.y == pytest.approx((87.85,))
    assert fig.data[0].customdata == ("baseline", "a", "b", "c")
    page = report.render(runs, [])
    assert ">broken</td>" in page and ">21.0%</td>" in page  # still in the table


def test_perplexity_report_range_labels_and_failures():
    runs = [_user_run("baseline", 12.0, 2.0e-3), _user_run("int8", 13.0, 1.1e-3, 2.0, 100_000),
            _user_run("prune", 15.0, 1.5e-3, 1.5, 300_000), _user_run("int4", 20.0, 0.6e-3, 4.0, 50_000),
            _user_run("int2", 1e4, 0.4e-3, 5.0, 30_000),
            Run("u", "gptq@fp", "gptq", [{"technique": "quantize", "config": {}}],
                {"status": "failed", "error": "evaluating: RuntimeError: <boom> & co"})]
    goal = objective_of(runs)
    fig = _page_figure(runs, goal)
    assert fig.layout.yaxis.title.text == "perplexity (lower is better)"
    # distances from 12: 0, 1, 3, 8, 9988; 75th percentile 8 -> window 12 ± 32; in it 12..20, pad 0.4
    assert list(fig.layout.yaxis.range) == pytest.approx([11.2, 20.8])
    # frontier minimises, on baseline p50 ÷ speedup: int2 0.4 ms (2/5, pinned at 20.4), int4 0.5, int8 1.0,
    # baseline 2.0 ms; prune (1.33 ms, 15) is beaten by int8
    assert fig.data[1].x == pytest.approx((0.4, 0.5, 1.0, 2.0)) and fig.data[1].y == pytest.approx(
        (20.4, 20.0, 13.0, 12.0))
    assert fig.data[1].line.shape == "hv"
    assert fig.data[0].text == ("baseline", "int8", "prune", "int4")  # 5 points <= 25: every one labelled
    assert fig.data[2].text == ("int2: 1e+04 ▲ (off the axis)",)
    page = report.render(runs, [], skipped=[("int8-static", "needs calibration <batches>")])
    assert "<th data-col=\"2\">perplexity (lower is better)</th>" in page
    section = page.split('<table id="not-measured">')[1].split("</table>")[0]
    assert "<td>gptq</td><td>failed</td><td>evaluating: RuntimeError: &lt;boom&gt; &amp; co</td>" in section
    assert "<td>int8-static</td><td>skipped</td><td>needs calibration &lt;batches&gt;</td>" in section
    assert ">gptq</td>" not in page.split('<table id="runs">')[1].split("</table>")[0]  # not a measured row
    # 13 is 8% above 12: no variant within 1% of the baseline, and the headline says so
    assert '<ul id="headline"><li>no variant is within 1% of the baseline\'s perplexity</li></ul>' in page


def test_many_points_label_baseline_and_frontier_only():
    # 30 variants: v_i at (i + 1) ms beside a 31 ms baseline (speedup 31 / (i + 1)), accuracy 80% + 0.3 i pt, so
    # each cheaper one is worse and all are on the frontier, but v5 (70% at 6 ms) is beaten by v4 (81.2% at 5 ms)
    runs = [Run("t", "baseline", "baseline", [], {"accuracy": 0.90, "model_bytes": 1000, "latency_p50_s": 31e-3})]
    for i in range(30):
        runs.append(Run("t", f"v{i}", f"v{i}", [{"technique": "prune", "config": {}}],
                        {"accuracy": 0.70 if i == 5 else 0.80 + 0.003 * i, "model_bytes": 1000,
                         "latency_p50_s": 31e-3, "speedup_measured": 31 / (i + 1)}))
    fig = _page_figure(runs, ACCURACY)
    assert {t for t in fig.data[0].text if t} == {"baseline"}  # 31 points > 25: the variants trace labels it only
    assert fig.data[1].text == tuple(f"v{i}" for i in range(30) if i != 5) + ("baseline",)  # the frontier, by cost


def test_ort_columns_series_and_predicted_per_device():
    base = dict(local_pred_s=0.9e-3)
    runs = [_user_run("baseline", 0.9, 1e-3, None, objective="accuracy", up=True, ort_latency_p50_s=0.5e-3,
                      ort_speedup_measured=2.0, ort_cosine=1.0, **base),
            _user_run("int8", 0.89, 0.6e-3, 2.0, 100_000, objective="accuracy", up=True, ort_latency_p50_s=None,
                      ort_speedup_measured=None, ort_cosine=None, ort_error="export: <unsupported op>",
                      local_pred_s=0.4e-3)]
    page = report.render(runs, [])
    for header in ("ORT p50 (ms)", "ORT × PyTorch baseline speed (one window)", "ORT cosine vs PyTorch",
                   "ORT error", "× baseline speed (beside it; &lt; 1: slower)"):  # not '× faster' for 0.96
        assert f">{header}</th>" in page
    assert ">export: &lt;unsupported op&gt;</td>" in page
    # ort_note (the window was disturbed) gets its own text column when stored
    noted = runs[:1] + [_user_run("int8", 0.89, 0.6e-3, 2.0, 100_000, objective="accuracy", up=True,
                                  ort_latency_p50_s=0.5e-3, ort_speedup_measured=20.0, ort_cosine=1.0,
                                  ort_note="PyTorch baseline: p50 in the window (20 ms) is 20.0x ...")]
    page = report.render(noted, [])
    assert ">ORT timing note</th>" in page and '<td class="text" data-v="&quot;PyTorch baseline: p50' in page
    fig = _page_figure(runs, objective_of(runs))
    ort = fig.data[3]
    # ORT baseline: PyTorch baseline p50 1 ms ÷ ORT speedup 2.0 = 0.5 ms; int8 has no ORT number
    assert ort.name == "ONNX Runtime" and ort.x == (0.5,) and ort.text == ("baseline (ORT)",)
    assert ort.marker.symbol != fig.data[0].marker.symbol
    assert "ORT p50" not in report.render(make_runs(), [])  # no ORT metric stored: no ORT column
    # predicted vs measured: local CPU (PyTorch) |0.9/1 - 1| = 0.1, |0.4/0.6 - 1| = 0.33 -> median 22%;
    # ORT: baseline only, |0.9/0.5 - 1| = 80%
    figs = dict(predicted_vs_measured(report_rows(runs, [], objective_of(runs)), []))
    assert set(figs) == {"predicted", "predicted-ort"}
    assert figs["predicted"].layout.title.text.endswith("median |predicted/measured − 1| = 22% over 2 variants")
    assert figs["predicted-ort"].layout.title.text.endswith("= 80% over 1 variant")
    gpu = [_user_run("baseline", 0.9, 1e-3, objective="accuracy", up=True, device="cuda:0",
                     device_name="NVIDIA H100 80GB HBM3")]
    gpu[0].predictions = {"h100-sxm": {"latency_s": 0.5e-3}, "rpi5": {"latency_s": 9e-3}}
    figs = dict(predicted_vs_measured(report_rows(gpu, ["h100-sxm", "rpi5"], objective_of(gpu)), ["h100-sxm", "rpi5"]))
    # measured on the H100: compared with the h100-sxm roofline (0.5 ms vs 1 ms: 50%), not the local CPU's
    assert set(figs) == {"predicted-cuda"}
    assert figs["predicted-cuda"].layout.title.text == (
        "PyTorch on the GPU vs its catalog roofline (h100-sxm): median |predicted/measured − 1| = 50% over 1 "
        "variant")
