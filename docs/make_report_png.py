"""Regenerate ``docs/report.png``, the README's picture of an HTML report.

A real run of shipped tools (``detect``, then ``segment`` on the first box found) on the ``tiny``
profile with a scripted plan, offline; its ``--report`` is opened in headless Chromium (Debian's
``chromium``, driven by Playwright; no browser is downloaded) and the top of the page is shot::

    .venv/bin/python docs/make_report_png.py                 # writes docs/report.png
    .venv/bin/python docs/make_report_png.py --out /tmp/r.png --html /tmp/r.html

``VISAGENT_CHROMIUM`` names another Chromium executable (default ``/usr/bin/chromium``; ``make
browser`` installs it).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QUESTION = "How many cups are there?"
PLAN = """\
- thought: find the cups first
  tool: detect
  args: {image: img_0, labels: [cup]}
- thought: outline the first cup
  tool: segment
  args: {image: img_0, boxes: [det_1_0]}
- final: "Cups boxed and outlined (tiny profile: random models, so the boxes are meaningless)."
  evidence: [det_1_0, mask_2_0]
"""
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip


def write_report(html: Path, work: Path) -> None:
    """``visagent ask sample:coffee QUESTION --profile tiny --planner script:PLAN --report HTML``."""
    (work / "cups.yaml").write_text(PLAN, encoding="utf-8")  # run from ``work``: the report names script:cups.yaml
    cmd = [
        sys.executable, "-m", "visagent.cli", "ask", "sample:coffee", QUESTION, "--profile", "tiny",
        "--planner", "script:cups.yaml", "--report", str(html.resolve()), "--local",
    ]  # fmt: skip
    env = dict(os.environ, HF_HUB_OFFLINE="1", VISAGENT_QUIET_TINY="1")
    proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True)
    if proc.returncode != 0 or not html.is_file():
        raise SystemExit(f"the run failed (exit {proc.returncode}): {proc.stderr.strip().splitlines()[-1:] or ''}")


def screenshot(html: Path, png: Path, chromium: str) -> None:
    """The top 1100 x 1400 pixels of ``html`` in headless Chromium, as ``png``."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 1400})
            page.goto(html.resolve().as_uri())
            page.wait_for_load_state("load")
            png.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(png), full_page=False)
        finally:
            browser.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "report.png", help="the PNG to write (default: docs/report.png)")
    parser.add_argument("--html", type=Path, default=None, help="also keep the HTML report here")
    args = parser.parse_args(argv)
    chromium = os.environ.get("VISAGENT_CHROMIUM", "/usr/bin/chromium")
    if not Path(chromium).is_file():
        raise SystemExit(f"headless Chromium not found at {chromium} (make browser installs it; VISAGENT_CHROMIUM names another)")
    with tempfile.TemporaryDirectory(prefix="visagent-report-png-") as tmp:
        html = args.html or Path(tmp) / "report.html"
        write_report(html, Path(tmp))
        screenshot(html, args.out, chromium)
    sys.stderr.write(f"wrote {args.out}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
