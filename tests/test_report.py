"""The HTML report: self-contained, escaped, and rendered by a real headless Chromium.

The browser test drives Debian's ``chromium`` (``apt-get install -y chromium``) with Playwright; it
never downloads a browser. Where chromium is missing it skips with the reason, except in CI
(``CI=true``), where it fails.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

from tests.fakes import FAKE_TOOLS
from visagent.report import report_html, write_report

CHROMIUM = os.environ.get("VISAGENT_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip


def _run(make_agent, question: str, final: str):
    from visagent.registry import load_builtin_tools

    tools = [*FAKE_TOOLS, load_builtin_tools()["segment"]]
    plan = [
        {"tool": "fake_find", "args": {"image": "img_0", "label": "cup", "n": 2}, "thought": "find the cups first"},
        {"tool": "nope", "args": {}},
        {"tool": "segment", "args": {"image": "img_0", "boxes": ["det_1_0"]}, "thought": "outline the first cup"},
        {"final": final, "evidence": ["det_1_0", "mask_2_0"]},
    ]
    run = make_agent(plan, tools=tools).stream(question, ["sample:coffee"])
    answer = run.result()
    assert answer.ok, answer.error
    return answer, run.media


@pytest.fixture
def run_with_evidence(make_agent):
    return _run(make_agent, "How many cups are there? <script>alert(1)</script>", "There are 2 cups <b>here</b>.")


def test_report_is_self_contained_and_escaped(run_with_evidence, tmp_path):
    answer, media = run_with_evidence
    html = report_html(answer, media)
    assert "<script>" not in html and "&lt;script&gt;" in html  # user text is escaped
    assert "There are 2 cups &lt;b&gt;here&lt;/b&gt;." in html
    assert not re.search(r'(src|href)="(https?:)?//', html)  # nothing loaded from elsewhere
    images = re.findall(r'src="data:image/jpeg;base64,[A-Za-z0-9+/=]+"', html)
    assert len(images) >= 4  # media, evidence, and the two tool steps' thumbnails
    for step in answer.trace.steps:
        assert f'id="step-{step.index}"' in html
    assert html.count('class="cited"') >= 2  # cited regions highlighted in their steps
    assert "sam_image_embedding" in html or "cache" in html
    out = tmp_path / "deep" / "r.html"
    write_report(answer, media, out)
    assert out.read_text(encoding="utf-8") == html


def _chromium_or_skip() -> str:
    if Path(CHROMIUM).is_file() or shutil.which(CHROMIUM):
        return CHROMIUM
    msg = f"headless browser test needs Debian's chromium at {CHROMIUM} (apt-get install -y chromium)"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(msg + " — CI must install it")
    pytest.skip(msg)


def test_report_renders_in_headless_chromium(make_agent, tmp_path):
    exe = _chromium_or_skip()
    from playwright.sync_api import sync_playwright

    answer, media = _run(make_agent, "Where is the cup?", "The cup is in the middle of the picture.")
    out = tmp_path / "report.html"
    write_report(answer, media, out)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 1400})
            requests: list[str] = []
            page.on("request", lambda r: requests.append(r.url))
            page.goto(out.as_uri())
            page.wait_for_load_state("load")
            assert page.locator("section.step").count() == len(answer.trace.steps)
            assert page.locator("#answer .text").inner_text() == answer.answer
            assert page.locator("#evidence tr.cited").count() == 2
            sizes = page.eval_on_selector_all("img", "els => els.map(e => [e.complete, e.naturalWidth, e.naturalHeight])")
            assert len(sizes) >= 4 and all(c and w > 0 and h > 0 for c, w, h in sizes)  # every image decoded
            assert page.locator("#step-5 img.thumb").count() == 1  # the segment step's overlay thumbnail
            assert all(u.startswith(("file:", "data:")) for u in requests), requests
            shot = tmp_path / "report.png"
            page.screenshot(path=str(shot), full_page=False)
            assert shot.stat().st_size > 10_000  # docs/report.png comes from shipped tools: docs/make_report_png.py
        finally:
            browser.close()


VIDEO = Path(__file__).resolve().parents[1] / "scenarios" / "media" / "moving_square.mp4"


@pytest.mark.parametrize("plan", [
    [{"final": "A square moves."}],
    [{"tool": "video_frames", "args": {"video": "vid_0", "frames": 2}}, {"final": "A square moves."}],
], ids=["no-frames", "sampled-frames"])  # fmt: skip
def test_report_video_has_a_thumbnail(make_agent, plan):
    run = make_agent(plan).stream("What moves?", [str(VIDEO)])
    answer = run.result()
    assert answer.ok, answer.error
    html = report_html(answer, run.media)
    thumb = re.search(r'<img class="thumb" alt="vid_0" src="([^"]*)"', html)
    assert thumb is not None
    assert re.fullmatch(r"data:image/jpeg;base64,[A-Za-z0-9+/=]{100,}", thumb.group(1))


def test_video_poster_is_the_middle_frame(tmp_path):
    from tests.helpers import frame_index, write_video
    from visagent.media import video_poster

    path = write_video(tmp_path / "v.mp4", [i * 0.1 for i in range(20)])
    assert frame_index(video_poster(path)) == 10
    assert frame_index(video_poster(path, at=0.0)) == 0


REPO = Path(__file__).resolve().parents[1]


def test_docs_report_png_comes_from_shipped_tools():
    """The README's picture is read back with the OCR tool: a real run, not the fakes of these tests."""
    import importlib.util

    import numpy as np
    import yaml
    from PIL import Image

    from visagent.registry import load_builtin_tools
    from visagent.tools.ocr import load_rapidocr

    spec = importlib.util.spec_from_file_location("make_report_png", REPO / "docs" / "make_report_png.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    tools = [step["tool"] for step in yaml.safe_load(script.PLAN) if "tool" in step]
    assert tools and set(tools) <= set(load_builtin_tools())
    shot = np.asarray(Image.open(REPO / "docs" / "report.png").convert("RGB"))
    text = " ".join(t for _, t, _ in load_rapidocr("builtin", "cpu", None, {}).read(shot))
    assert "fake" not in text and "profile tiny" in text
    assert all(tool in text for tool in tools)
