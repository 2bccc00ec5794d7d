"""Drawing grounded answers: sizes, cited regions drawn (pixels change inside the box), masks, sheets."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tests.fakes import FAKE_TOOLS
from visagent.errors import UsageError
from visagent.media import MediaStore
from visagent.render import (
    CAPTION_H,
    PAD,
    annotate,
    contact_sheet,
    decode_rle,
    iter_regions,
    region_label,
    render_answer,
    render_regions,
    sheet_layout,
)
from visagent.tools.base import Prob, Region, Tool, ToolInput, ToolOutput


def _rle(mask: np.ndarray) -> dict:
    from pycocotools import mask as mask_utils

    r = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in r["size"]], "counts": r["counts"].decode("ascii")}


class FramesIn(ToolInput):
    image: str
    n: int = 3
    threshold: Prob = 0.5


class FramesOut(ToolOutput):
    frames: list[str]
    detections: list[Region]

    def observation(self) -> str:
        return f"{len(self.frames)} frames: {', '.join(self.frames)}"


class FakeFrames(Tool):
    """Makes n 'frames' (crops of the image, timestamps 0.5 s apart) and one box on the last."""

    name = "fake_frames"
    description = "Split an image into timed frames (fake video tool, for tests)."
    Input = FramesIn
    Output = FramesOut

    def run(self, inp: FramesIn, ctx) -> FramesOut:  # noqa: ANN001
        img = ctx.image(inp.image)
        ids = [
            ctx.add_image(img.rotate(10 * k), f"{inp.image}#frame{k}", timestamp=0.5 * k, parent="vid_0")
            for k in range(inp.n)
        ]
        det = Region(id=ctx.region_id("det", 0), image=ids[-1], box=[20, 20, 120, 100], score=0.7, label="coin")
        return FramesOut(frames=ids, detections=[det])


def test_iter_regions_and_labels():
    out = {"a": [{"id": "det_1_0", "image": "img_0", "box": [0, 0, 1, 1]}], "b": {"c": {"id": "x", "image": "i"}}}
    assert [r["id"] for r in iter_regions(out)] == ["det_1_0"]
    assert region_label({"id": "det_1_0", "label": "cat", "score": 0.876}) == "det_1_0 cat 0.88"
    assert region_label({"id": "ocr_1_2", "text": "Hello", "score": 0.9}) == "ocr_1_2: 'Hello' 0.90"


def test_annotate_draws_inside_the_box_only():
    img = Image.new("RGB", (200, 160), (128, 128, 128))
    drawn = np.asarray(annotate(img, [{"id": "det_1_0", "image": "img_0", "box": [40, 50, 150, 120], "score": 0.9, "label": "x"}]))
    base = np.asarray(img)
    changed = (drawn != base).any(axis=2)
    assert changed[50:121, 40:151].any()  # the box outline and label
    assert changed[50, 40:151].all()  # the top edge is drawn along the whole box
    assert not changed[140:, :].any() and not changed[:, 170:].any()  # far from the box: untouched


def test_masks_are_filled_translucent():
    img = Image.new("RGB", (120, 100), (250, 250, 250))
    mask = np.zeros((100, 120), bool)
    mask[30:70, 40:90] = True
    assert (decode_rle(_rle(mask), 100, 120) == mask).all()
    drawn = np.asarray(annotate(img, [{"id": "mask_1_0", "image": "img_0", "box": [40, 30, 90, 70], "rle": _rle(mask)}]))
    inner = drawn[40:60, 50:80].astype(int)
    assert (np.abs(inner - 250).sum(axis=2) > 30).all()  # filled
    assert inner.min() > 0  # translucent: blended, not an opaque black
    assert (drawn[90:, :] == 250).all()  # below the mask: untouched


def test_render_answer_single_image_keeps_its_size(make_agent, tmp_path):
    plan = [{"tool": "fake_find", "args": {"image": "img_0", "label": "coin", "n": 1}}, {"final": "1 coin", "evidence": ["det_1_0"]}]
    run = make_agent(plan, tools=FAKE_TOOLS).stream("how many coins?", ["sample:coins"])
    answer = run.result()
    out = tmp_path / "show.png"
    render_answer(answer, run.media, out)
    shown = Image.open(out).convert("RGB")
    original = run.media.image("img_0")
    assert shown.size == original.size == (384, 303)
    x0, y0, x1, y1 = (int(v) for v in answer.evidence[0].region["box"])
    diff = (np.asarray(shown).astype(int) - np.asarray(original).astype(int)) != 0
    assert diff[y0 : y1 + 1, x0 : x1 + 1].any(axis=2).sum() > 2 * (x1 - x0)  # outline drawn in the box
    assert not diff[y1 + 20 :, x1 + 20 :].any()  # outside the cited box nothing changes


def test_real_segment_masks_render(make_agent, tmp_path):
    plan = [
        {"tool": "segment", "args": {"image": "img_0", "boxes": [[60, 40, 200, 180]]}},
        {"final": "a mask", "evidence": ["mask_1_0"]},
    ]
    run = make_agent(plan).stream("segment", ["sample:coffee"])
    answer = run.result()
    assert answer.ok, answer.error
    region = answer.evidence[0].region
    mask = decode_rle(region["rle"], 400, 600)
    out = tmp_path / "mask.png"
    render_answer(answer, run.media, out)
    shown = np.asarray(Image.open(out).convert("RGB")).astype(int)
    original = np.asarray(run.media.image("img_0")).astype(int)
    if mask.any():
        assert (shown[mask] != original[mask]).any(axis=1).mean() > 0.9  # the mask is filled
    x0, y0, x1, y1 = (int(v) for v in region["box"])
    assert (shown[y0 : y1 + 1, x0 : x1 + 1] != original[y0 : y1 + 1, x0 : x1 + 1]).any()


def test_contact_sheet_for_frames_with_timestamps(make_agent, tmp_path):
    plan = [{"tool": "fake_frames", "args": {"image": "img_0", "n": 3}}, {"final": "a coin", "evidence": ["det_1_0"]}]
    run = make_agent(plan, tools=[FakeFrames]).stream("where?", ["sample:coins"])
    answer = run.result()
    out = tmp_path / "sheet.png"
    render_answer(answer, run.media, out)
    sheet = Image.open(out)
    n = 4  # the input image and 3 frames
    assert len(run.media.ids("image")) == n
    width, rows = sheet_layout([run.media.image(i).size for i in run.media.ids("image")])
    assert [len(widths) for _, widths in rows] == [2, 2]
    assert rows[0][0] == 303 and rows[0][1] == [384, 384]  # coins is 384 x 303: tiles at its own size
    assert sheet.size == (width, sum(h + CAPTION_H + PAD for h, _ in rows) + PAD)
    assert sheet.size == (2 * 384 + 3 * PAD, 2 * (303 + CAPTION_H + PAD) + PAD)
    assert run.media.info("img_3").timestamp == 1.0
    from visagent.render import _caption

    assert _caption(run.media.info("img_3")) == "img_3 @ 1.00 s of vid_0"
    # the cited frame comes first in the sheet and carries the drawn box
    first = np.asarray(sheet.crop((PAD, PAD, PAD + 384, PAD + 303)).convert("RGB")).astype(int)
    plain = np.asarray(run.media.image("img_3")).astype(int)
    assert (first != plain).any(axis=2).sum() > 100


def test_contact_sheet_size_formula_and_empty():
    tiles = [(Image.new("RGB", (50, 40)), f"t{k}") for k in range(5)]
    sheet = contact_sheet(tiles, tile=64)
    width, rows = sheet_layout([img.size for img, _ in tiles], tile=64)
    assert [len(widths) for _, widths in rows] == [3, 2]  # fuller rows first
    assert rows[0][0] == 51 and sum(rows[0][1]) + 4 * PAD == width  # 64 wide at 50:40; each row fills the width
    assert sum(rows[1][1]) + 3 * PAD == width and rows[1][0] > rows[0][0]  # the shorter row has taller tiles
    assert sheet.size == (width, sum(h + CAPTION_H + PAD for h, _ in rows) + PAD)
    with pytest.raises(UsageError, match="no images"):
        contact_sheet([])


def _white_fraction(image: Image.Image) -> float:
    return float((np.asarray(image.convert("RGB")) >= 250).all(axis=2).mean())


@pytest.mark.parametrize("n", [2, 3, 4, 5, 6, 7, 8, 9, 12, 24])
@pytest.mark.parametrize("size", [(1280, 720), (640, 360), (160, 90)])
def test_contact_sheet_of_16_9_frames_has_little_white(n, size):
    rng = np.random.default_rng(n)
    frames = [Image.fromarray(rng.integers(0, 200, (size[1], size[0], 3), dtype=np.uint8)) for _ in range(n)]
    sheet = contact_sheet([(f, f"img_{k} @ {k * 0.5:.2f} s of vid_0") for k, f in enumerate(frames)])
    assert _white_fraction(sheet) < 0.15
    w, h = sheet.size
    assert 1 / 3 <= w / h <= 5  # neither a strip nor a column of many tiles
    width, rows = sheet_layout([f.size for f in frames])
    for height, widths in rows:  # every tile keeps 16:9 (rounding aside): no letterbox bands
        assert all(abs(tw / height - 16 / 9) < 0.05 for tw in widths[:-1])


def test_contact_sheet_of_mixed_shapes_keeps_each_aspect_ratio():
    sizes = [(1280, 720), (480, 640), (300, 300), (1280, 720), (800, 200)]
    width, rows = sheet_layout(sizes)
    shapes = [(w, h) for h, widths in rows for w in widths]
    assert len(shapes) == len(sizes)
    for (w, h), (sw, sh) in zip(shapes, sizes):
        assert abs(w / h - sw / sh) / (sw / sh) < 0.06
    sheet = contact_sheet([(Image.new("RGB", s, (40, 90, 160)), "x") for s in sizes])
    assert _white_fraction(sheet) < 0.15


def test_render_regions_without_images_is_a_clear_error():
    with pytest.raises(UsageError, match="nothing to draw"):
        render_regions(MediaStore(), [])
