"""The evaluation HTML report: self-contained, escaped, and rendered by a real headless Chromium
(Debian's ``chromium`` driven by Playwright, as in tests/test_report.py: never a downloaded browser)."""

from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.test_eval_run import TALLY, write_configs, write_tallyqa
from tests.test_report import CHROMIUM_ARGS, _chromium_or_skip
from visagent.cli import main
from visagent.eval.html import eval_report_html


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Two configs (``<b>two</b>`` answers 2, ``one`` answers 1) run on the TallyQA set."""
    tmp = tmp_path_factory.mktemp("eval-report")
    tally = write_tallyqa(tmp / "tallyqa")
    configs = write_configs(tmp, {"two": "There are 2 dots.", "one": "one"})
    out = tmp / "out"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(io.StringIO()):
        code = main(["eval", "run", str(tally), "-f", "tallyqa", "-c", str(configs[0]), "-c", str(configs[1]), "-p", "tiny",
                     "-o", str(out), "--json"])  # fmt: skip
    assert code == 0
    return {"out": out, "result": json.loads(buf.getvalue()), "path": out / "report.html"}


def test_report_is_self_contained_and_escaped(report: dict[str, Any]) -> None:
    html = report["path"].read_text(encoding="utf-8")
    assert "<script" not in html and not re.search(r'(src|href)="(https?:)?//', html)
    assert html.count("<svg") == 4  # categories, latency, one confusion matrix per config
    result = report["result"]
    records = {n: [json.loads(line) for line in (report["out"] / n / "records.jsonl").read_text().splitlines()] for n in ("two", "one")}
    page = eval_report_html(fmt="tally<qa>", dataset="/data/<x>", task="count", metrics=result["metrics"], summaries=result["configs"],
                            records={"<b>" + n: rs for n, rs in records.items()}, comparison=result["comparison"])  # fmt: skip
    assert "<b>" not in page and "&lt;b&gt;" in page and "tally&lt;qa&gt;" in page and "/data/&lt;x&gt;" in page
    assert "MediaError" in page  # the failed items are listed with their error


def test_report_renders_in_headless_chromium(report: dict[str, Any], tmp_path: Path) -> None:
    exe = _chromium_or_skip()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 1400})
            problems: list[str] = []
            requests: list[str] = []
            page.on("console", lambda m: problems.append(m.text) if m.type in ("error", "warning") else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.on("request", lambda r: requests.append(r.url))
            page.goto(report["path"].as_uri())
            page.wait_for_load_state("load")
            assert page.locator("#summary tbody tr").count() == 2
            assert page.locator("#differences tbody tr").count() == 6  # exact, within1, abs_error, latency, steps, tool calls
            # accuracy per category: a bar per config and category (simple, complex), drawn with a size
            bars = page.locator("#plot-categories rect.bar")
            assert bars.count() == 4
            heights = [float(bars.nth(i).get_attribute("height") or 0) for i in range(4)]
            assert max(heights) > 0
            assert page.locator("#plot-latency polyline.hist").count() == 2
            assert page.locator("svg.plot-confusion").count() == 2
            # the "two" config predicted 2 for every readable item: its column "2" holds them all
            cells = page.eval_on_selector_all("#plot-confusion-two rect.cell title", "els => els.map(e => e.textContent)")
            readable = len(TALLY) - 2
            assert sum(int(t.rsplit(": ", 1)[1]) for t in cells if "predicted 2:" in t) == readable
            assert sum(int(t.rsplit(": ", 1)[1]) for t in cells if "predicted none:" in t) == 2
            for sel in ("#plot-categories", "#plot-latency", "#plot-confusion-one"):
                box = page.locator(sel).bounding_box()
                assert box is not None and box["width"] > 100 and box["height"] > 80, sel
            assert page.locator("#failures li").count() == 4  # two failed items per config
            assert not problems, problems
            assert all(u.startswith(("file:", "data:")) for u in requests), requests
            shot = tmp_path / "eval.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
        finally:
            browser.close()
