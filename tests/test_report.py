"""`filterdb report` (issue 12): the demo's report rendered in headless Chromium, its numbers against
the stored analysis tables, its bounded samples against the selection, and its bad input."""

from __future__ import annotations

import os
from pathlib import Path

import lance
import numpy as np
import pytest

from flows.demo.run import REPORT_FOLDER, TRAINED

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def demo_report(quick_demo) -> Path:
    out, status = quick_demo
    assert status == 0
    return out / REPORT_FOLDER / "report.html"


@pytest.fixture(scope="module")
def rendered(demo_report, tmp_path_factory):
    """The demo report opened in Debian's chromium: console messages, page errors, requests, images and
    the heatmap tables as the browser sees them; a full-page screenshot beside the report."""
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (`apt-get install -y chromium`, as .ci/run does)")
    from playwright.sync_api import sync_playwright

    seen = {"console": [], "page_errors": [], "requests": []}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.on("console", lambda message: seen["console"].append((message.type, message.text)))
            page.on("pageerror", lambda error: seen["page_errors"].append(str(error)))
            page.on("request", lambda request: seen["requests"].append(request.url))
            page.goto(demo_report.as_uri(), wait_until="load")
            seen["images"] = page.evaluate("[...document.images].map(i => ({alt: i.alt, complete: i.complete, width: i.naturalWidth}))")
            seen["tables"] = page.evaluate("""[...document.querySelectorAll('table.kl')].map(t => ({
                axis: t.dataset.axis,
                cells: [...t.querySelectorAll('td[data-value]')].map(c => [c.dataset.a, c.dataset.b, c.dataset.value, c.textContent])}))""")
            seen["captions"] = page.evaluate("[...document.querySelectorAll('figure')].map(f => f.querySelector('figcaption')?.textContent || '')")
            seen["text"] = page.evaluate("document.body.innerText")
            seen["screenshot"] = demo_report.with_name("report.png")
            page.screenshot(path=str(seen["screenshot"]), full_page=True)
        finally:
            browser.close()
    print(f"report screenshot: {seen['screenshot']}")
    return seen


def test_demo_writes_the_report(demo_report):
    assert demo_report.is_file() and demo_report.stat().st_size > 0


def test_report_loads_in_chromium_without_console_errors(rendered):
    assert rendered["page_errors"] == []
    assert [m for m in rendered["console"] if m[0] in ("error", "warning")] == []


def test_report_fetches_nothing(rendered):
    assert [url for url in rendered["requests"] if not url.startswith(("file:", "data:"))] == []


def test_every_image_of_the_report_has_loaded(rendered):
    images = rendered["images"]
    assert len(images) >= 10  # basis, per axis heatmap and ridges, drift, density, quality, galleries
    assert [i for i in images if not i["complete"] or i["width"] == 0] == []


def test_a_screenshot_is_saved(rendered):
    assert rendered["screenshot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_every_figure_has_a_caption_and_the_report_names_its_snapshot(rendered, quick_demo):
    out, _ = quick_demo
    assert rendered["captions"] and all(len(c) > 80 for c in rendered["captions"])
    assert "near 0" in rendered["text"] and "random" in rendered["text"]  # how to read the entropy
    version = lance.dataset(str(out / "db" / "filters.lance")).version
    assert f"filters.lance version analysed\t{version}" in rendered["text"]
    assert TRAINED in rendered["text"]


def test_heatmap_tables_hold_the_stored_shifts(rendered, quick_demo):
    out, _ = quick_demo
    version = lance.dataset(str(out / "db" / "filters.lance")).version
    stored = lance.dataset(str(out / "db" / "analysis" / "shifts.lance")).to_table(filter=f"db_version = {version}").to_pylist()
    tables = {t["axis"]: t["cells"] for t in rendered["tables"]}
    assert set(tables) == {"task", "visual_category", "depth"}
    for axis, cells in tables.items():
        rows = [r for r in stored if r["axis"] == axis and TRAINED in r["selection"]]
        expected = {frozenset((r["group_a"], r["group_b"])): r["kl_weighted"] for r in rows}
        assert len(cells) == 2 * len(expected) > 0  # every ordered pair, each unordered pair stored once
        for a, b, value, text in cells:
            assert float(value) == expected[frozenset((a, b))]
            assert text == f"{expected[frozenset((a, b))]:.3f}"


def test_sample_is_bounded_and_drawn_from_the_selection(quick_demo):
    from ops.report_data import sample_filters
    from ops.shifts import select_filters

    out, _ = quick_demo
    db = out / "db"
    selection = select_filters(db, ["task"], TRAINED)
    sample = sample_filters(str(db), selection.predicate, selection.version, ["task", "depth"], n=500, per_group=5)
    everything = lance.dataset(str(db / "filters.lance")).to_table(columns=["weights", "task", "conv_depth_norm"], filter=selection.predicate)
    weights = everything.column("weights").combine_chunks().flatten().to_numpy().reshape(-1, 9)
    assert sample.selected == everything.num_rows
    assert sample.weights.shape == (500, 9)
    rows_of = {w.tobytes(): i for i, w in enumerate(weights)}
    assert all(w.tobytes() in rows_of for w in sample.weights)
    tasks = everything.column("task").to_numpy(zero_copy_only=False)
    assert set(sample.groups["task"]) == set(tasks)
    for task, filters in sample.groups["task"].items():
        assert len(filters) == min(5, int((tasks == task).sum()))
        assert all(task in set(tasks[weights_equal(weights, f)]) for f in filters)
    depth = everything.column("conv_depth_norm").to_numpy()
    for label, filters in sample.groups["depth"].items():
        low, high = (float(x) for x in label.strip("[(]").split(", "))
        for f in filters:
            d = depth[weights_equal(weights, f)]
            assert (((d > low) if label.startswith("(") else (d >= low)) & (d <= high)).any()


def weights_equal(weights: np.ndarray, f: np.ndarray) -> np.ndarray:
    return (weights == f).all(axis=1)


def test_stored_result_reads_back_what_the_flow_computed(quick_demo):
    from flows.shifts import run_shifts
    from ops.report_data import stored_shift_result

    out, _ = quick_demo
    db = out / "db"
    computed = run_shifts(db, "visual_category", where=TRAINED, write=False, progress=False)
    stored = stored_shift_result(str(db), "visual_category", computed.selection, computed.db_version)
    assert stored.groups == computed.groups
    np.testing.assert_array_equal(stored.sizes, computed.sizes)
    np.testing.assert_array_equal(stored.kl_weighted, computed.kl_weighted)
    np.testing.assert_array_equal(stored.kl, computed.kl)


def test_stored_only_names_the_command_of_a_missing_analysis(quick_demo, tmp_path):
    from flows.report import build_report

    out, _ = quick_demo
    path = build_report(out / "db", tmp_path, axes=["family"], where=TRAINED, stored_only=True, sample_size=1000)
    page = path.read_text()
    assert f"filterdb shifts --db {out / 'db'} --by family" in page
    assert 'class="kl"' not in page


def test_report_of_a_missing_db_is_one_line_with_status_2(tmp_path, capsys):
    from flows.cli import main

    assert main(["report", "--db", str(tmp_path / "nowhere")]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("filterdb report:") and "\n" not in error


def test_report_of_an_unknown_axis_is_one_line_with_status_2(quick_demo, capsys):
    from flows.cli import main

    out, _ = quick_demo
    assert main(["report", "--db", str(out / "db"), "--axes", "task,colour", "--stored-only"]) == 2
    error = capsys.readouterr().err.strip()
    assert "colour" in error and "\n" not in error


def test_figures_are_matplotlib_figures_from_python(quick_demo):
    from matplotlib.figure import Figure

    from ops import figures
    from ops.report_data import stored_shift_result
    from ops.shifts import select_filters

    out, _ = quick_demo
    selection = select_filters(out / "db", ["depth"], TRAINED)
    result = stored_shift_result(str(out / "db"), "depth", selection.predicate, selection.version)
    basis = figures.basis_figure(result.basis)
    assert isinstance(basis, Figure)
    titles = [ax.get_title() for ax in basis.axes]
    assert titles == [f"c{k + 1}\n{r:.1%}" for k, r in enumerate(result.basis.explained_variance_ratio)]
    heatmap = figures.kl_heatmap_figure(result)
    assert [t.get_text() for t in heatmap.axes[0].get_yticklabels()] == [f"{g} (n={int(n):,})" for g, n in zip(result.groups, result.sizes)]
    np.testing.assert_array_equal(heatmap.axes[0].images[0].get_array(), result.kl_weighted)


def test_failed_models_are_listed_with_their_errors(quick_demo, tmp_path):
    import shutil

    from flows.report import build_report
    from ops.db import open_db
    from ops.store import ModelsRow

    out, _ = quick_demo
    db = tmp_path / "db"
    shutil.copytree(out / "db", db, ignore=shutil.ignore_patterns("analysis"))
    open_db(db).append_models([ModelsRow({"model_id": "broken-model", "status": "failed", "error": "ValueError: no 4-D tensor in broken.pt"})])
    page = build_report(db, tmp_path / "report", axes=["depth"], where=TRAINED, stored_only=True, sample_size=1000).read_text()
    assert "1 failed" in page
    assert "<td>broken-model</td><td>ValueError: no 4-D tensor in broken.pt</td>" in page


def test_heatmaps_are_in_the_study_order(rendered, quick_demo):
    """Depth bins in order; other axes by the mean of their column of the stored matrix, lowest first."""
    out, _ = quick_demo
    version = lance.dataset(str(out / "db" / "filters.lance")).version
    stored = lance.dataset(str(out / "db" / "analysis" / "shifts.lance")).to_table(filter=f"db_version = {version}").to_pylist()
    for table in rendered["tables"]:
        shown = list(dict.fromkeys(a for a, _, _, _ in table["cells"]))
        rows = [r for r in stored if r["axis"] == table["axis"] and TRAINED in r["selection"]]
        groups = sorted({r["group_a"] for r in rows} | {r["group_b"] for r in rows})
        if table["axis"] == "depth":
            assert shown == sorted(groups, key=lambda label: float(label.strip("[(").split(",")[0]))
            continue
        total = {g: sum(r["kl_weighted"] for r in rows if g in (r["group_a"], r["group_b"])) for g in groups}
        assert shown == sorted(groups, key=lambda g: (total[g] / (len(groups) - 1), g))
