"""The HTML report: content from the runs, and the page rendered in real headless Chromium."""

import json
import os
from pathlib import Path

import pytest

from effml.hardware import predict
from effml.hardware.plot import roofline_figure
from effml.study import report
from effml.study.rows import frontier_keys, headline, report_rows

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
