"""The ``ocr`` tool with RapidOCR's REAL PP-OCRv4 weights (shipped in its wheel) on scikit-image's
scanned ``page``: recognized words, ids, boxes, reading order, errors, agent and CLI runs."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests.helpers import ask_cli
from visagent import ids
from visagent.context import CallContext
from visagent.errors import ToolError
from visagent.media import MediaStore
from visagent.session import Session
from visagent.tools.base import OBSERVATION_LIMIT
from visagent.tools.ocr import Ocr, OcrInput, OcrOutput, _reading_order
from visagent.types import ErrorStep

# words printed on skimage.data.page() (a scan of a paragraph about region-based segmentation)
PAGE_WORDS = ("segmentation", "markers", "coins", "background", "unambiguously", "histogram")


@pytest.fixture(scope="module")
def page_output(tiny_config: Any, shared_pool: Any) -> tuple[OcrOutput, CallContext]:
    media = MediaStore()
    media.add("sample:page")
    ctx = Session(tiny_config, shared_pool, media).open_call()
    return Ocr().run(OcrInput(image="img_0"), ctx), ctx


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", text.lower()))


def test_real_weights_read_the_page(page_output: tuple[OcrOutput, CallContext]) -> None:
    out, ctx = page_output
    text = " ".join(line.text for line in out.lines).lower()
    for word in PAGE_WORDS:
        assert word in text, f"{word!r} not recognized in {text!r}"
    assert {"let", "us", "first", "determine"} <= _words(text)
    assert ctx.models == ["builtin"]


def test_lines_ids_boxes_scores_and_order(page_output: tuple[OcrOutput, CallContext]) -> None:
    out, _ = page_output
    assert len(out.lines) >= 4
    w, h = 384, 191  # skimage.data.page().shape == (191, 384)
    for i, line in enumerate(out.lines):
        assert line.id == f"ocr_1_{i}" and ids.parse_region_id(line.id)
        x0, y0, x1, y1 = line.box
        assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
        assert 0.5 <= line.score <= 1.0 and line.text.strip() and line.image == "img_0"
        assert len(line.polygon) == 4
    tops = [line.box[1] for line in out.lines]
    assert tops == sorted(tops), "lines are not top to bottom"
    # the title is the first line and sits above the paragraph
    assert "segmentation" in out.lines[0].text.lower()
    obs = out.observation()
    assert len(obs) <= OBSERVATION_LIMIT and "ocr_1_0" in obs
    assert out.regions() == out.lines


def test_min_score_filters(tiny_config: Any, shared_pool: Any) -> None:
    media = MediaStore()
    media.add("sample:page")
    ctx = Session(tiny_config, shared_pool, media).open_call()
    strict = Ocr().run(OcrInput(image="img_0", min_score=0.99), ctx)
    assert all(line.score >= 0.99 for line in strict.lines)


def test_blank_image_has_no_text_and_bad_ids_fail(tiny_config: Any, shared_pool: Any) -> None:
    media = MediaStore()
    media.add(np.full((120, 200, 3), 255, np.uint8))
    ctx = Session(tiny_config, shared_pool, media).open_call()
    out = Ocr().run(OcrInput(image="img_0"), ctx)
    assert out.lines == [] and out.observation() == "no text found on img_0"
    with pytest.raises(ToolError, match="unknown media id 'img_7'"):
        Ocr().run(OcrInput(image="img_7"), ctx)
    with pytest.raises(ValueError, match="min_score"):
        OcrInput(image="img_0", min_score=1.5)


def test_reading_order_rows_left_to_right() -> None:
    def quad(x0: float, y0: float, x1: float, y1: float) -> list[list[float]]:
        return [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]

    items = [(quad(200, 52, 260, 70), "right", 0.9), (quad(0, 100, 80, 120), "below", 0.9), (quad(0, 50, 80, 68), "left", 0.9)]
    assert [t for _, t, _ in _reading_order(items)] == ["left", "right", "below"]


def test_agent_run_cites_a_line(make_agent: Any) -> None:
    ans = make_agent([{"tool": "ocr", "args": {"image": "img_0"}}, {"final": "the title", "evidence": ["ocr_1_0"]}]).ask(
        "what is the title?", ["sample:page"]
    )
    assert ans.status == "answered", ans.error
    assert ans.evidence[0].id == "ocr_1_0" and "segmentation" in ans.evidence[0].region["text"].lower()
    assert not [s for s in ans.trace.steps if isinstance(s, ErrorStep)]


def test_cli_scripted_ocr_on_page(tmp_path: Path) -> None:
    plan = [{"tool": "ocr", "args": {"image": "img_0"}}, {"final": "text read", "evidence": ["ocr_1_1"]}]
    proc = ask_cli(tmp_path, ["sample:page"], "what does the page say?", plan)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    assert result["status"] == "answered"
    step = next(s for s in result["trace"]["steps"] if s.get("type") == "tool")
    text = " ".join(line["text"] for line in step["output"]["lines"]).lower()
    assert "markers" in text and "coins" in text
    assert result["evidence"][0]["id"] == "ocr_1_1"


def test_rgba_and_grayscale_images_are_read(tiny_config: Any, shared_pool: Any) -> None:
    import skimage.data

    gray = Image.fromarray(skimage.data.page())  # mode L -> normalized to RGB by the media store
    media = MediaStore()
    media.add(gray.convert("LA"))
    ctx = Session(tiny_config, shared_pool, media).open_call()
    out = Ocr().run(OcrInput(image="img_0"), ctx)
    assert "markers" in " ".join(line.text for line in out.lines).lower()


def test_words_of_the_page_are_spaced(page_output: tuple[OcrOutput, CallContext]) -> None:
    out, _ = page_output
    texts = [line.text for line in out.lines]
    assert texts[0] == "Region-based segmentation"  # the recognizer alone reads "Region-basedsegmentation"
    assert "background. These markers are pixels that we can label" in texts
    assert "histogram of grey values:" in texts


def _rendered(lines: list[str], size: int = 32) -> np.ndarray:
    from PIL import ImageDraw, ImageFont

    font = ImageFont.load_default(size=size)
    img = Image.new("RGB", (1500, 90 * len(lines)), "white")
    draw = ImageDraw.Draw(img)
    for i, text in enumerate(lines):
        draw.text((20, 20 + 90 * i), text, fill="black", font=font)
    return np.asarray(img)


def _space_positions(text: str) -> set[int]:
    """How many non-space characters come before each space."""
    return {len(text[:i].replace(" ", "")) for i, c in enumerate(text) if c == " "}


def test_word_spacing_adds_no_space_inside_words(tiny_config: Any, shared_pool: Any) -> None:
    from visagent.tools.ocr import load_rapidocr

    lines = ["Typewriter TAVERN Wolf AVATAR 1917", "Invoice number 12345 total 99.50 EUR", "minimum illuminating wavelength"]
    bundle = load_rapidocr("builtin", "cpu", None, {})
    checked = 0
    for size in (20, 32, 48):
        for _, text, _ in bundle.read(_rendered(lines, size)):
            truth = next((t for t in lines if t.replace(" ", "") == text.replace(" ", "")), None)
            if truth is None:  # a letter misread: nothing to compare the spaces with
                continue
            assert _space_positions(text) <= _space_positions(truth), (size, text)  # a space only where the text has one
            checked += 1
    assert checked >= 6


def test_word_spacing_leaves_slanted_lines_alone() -> None:
    from visagent.tools.ocr import word_spaced

    gray = np.full((40, 260), 255.0)
    boxes = []
    for x in (10, 44, 78, 180):  # "abc" close together, then a wide gap before "d"
        gray[10:30, x : x + 30] = 0
        boxes.append([[x, 10], [x + 30, 10], [x + 30, 30], [x, 30]])
    level = [[5, 5], [215, 5], [215, 35], [5, 35]]
    assert word_spaced(gray, level, "abcd", list("abcd"), boxes) == "abc d"
    slanted = [[5, 5], [215, 40], [215, 70], [5, 35]]
    assert word_spaced(gray, slanted, "abcd", list("abcd"), boxes) == "abcd"
    assert word_spaced(gray, level, "abcd", list("abc"), boxes[:3]) == "abcd"  # characters that do not spell the text
    assert word_spaced(np.full((40, 260), 255.0), level, "abcd", list("abcd"), boxes) == "abcd"  # no ink: no change
