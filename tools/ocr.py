"""``ocr``: read the text lines of an image with RapidOCR.

Backend ``rapidocr`` (family ``ocr``, checkpoint ``builtin``): ``rapidocr_onnxruntime.RapidOCR``,
whose wheel ships the PP-OCRv4 detection, direction-classification and recognition ONNX models
(real weights, no download). ``options`` are passed to ``RapidOCR(**options)`` (e.g.
``{"text_score": 0.5}``); a checkpoint other than ``builtin`` is a RapidOCR YAML config file
(``config_path``) pointing at other models.

Lines come back in reading order (top to bottom, then left to right), each with an id
``ocr_<n>_<i>``, the text, the axis-aligned box [x0, y0, x1, y1] in original-image pixels (the
bounding box of the detected quadrilateral, also kept as ``polygon``) and the recognition score.
Word spaces the recognizer left out are restored from the gaps in the line's ink (``word_spaced``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from pydantic import Field

from visagent.errors import ToolError
from visagent.tools.base import Prob, Region, Tool, ToolInput, ToolOutput, clip_text
from visagent.tools.models import register_loader

log = logging.getLogger(__name__)

FAMILY = "ocr"


#: word spacing: a blank run of at least max(WORD_GAP_LETTERS x the line's typical letter gap,
#: WORD_GAP_HEIGHT x the line's box height) pixels in the line's middle band, between two
#: characters whose centres lie at least WORD_PITCH x the median pitch of the character pairs
#: around them (PITCH_WINDOW pairs on each side) apart, separates two words
WORD_GAP_LETTERS = 3.0
WORD_GAP_HEIGHT = 0.18
WORD_PITCH = 1.25
PITCH_WINDOW = 3
#: the middle band: the box less this fraction of its height at the top and at the bottom
BAND = 0.2


def _blank_runs(ink: Any) -> list[tuple[int, int]]:
    """(start, width) of the runs of False between the first and last True of a bool row."""
    import numpy as np

    cols = np.flatnonzero(ink)
    if len(cols) < 2:
        return []
    steps = np.diff(cols)
    return [(int(cols[i]) + 1, int(steps[i]) - 1) for i in np.flatnonzero(steps > 1)]


def word_spaced(gray: Any, poly: list[list[float]], text: str, chars: list[str], char_boxes: list[Any]) -> str:
    """``text`` with a space wherever the image shows a word gap that the recognizer left out
    (PP-OCR's recognizer often runs words together: "Region-basedsegmentation").

    ``gray``: the image (H x W floats); ``poly``: the line's quadrilateral; ``chars`` / ``char_boxes``:
    RapidOCR's characters and their boxes (``return_word_box``), in image pixels. The ink of the
    line's middle band (where every letter has ink, away from the lines above and below) is
    projected onto the x axis; a blank run wide enough (see ``WORD_GAP_*``) between two characters
    that have no space between them and lie further apart than letters do (``WORD_PITCH``: a
    letter with an open side, like T or a tabular 1, leaves a blank run but keeps its pitch) gets
    one. Lines that are not near horizontal are left as they are.
    """
    import numpy as np

    if "".join(chars) != text or len(char_boxes) != len(chars) or len(chars) < 2:
        return text
    p = np.asarray(poly, dtype=float)
    (tlx, tly), (trx, try_) = p[0], p[1]
    x0, x1, y0, y1 = p[:, 0].min(), p[:, 0].max(), p[:, 1].min(), p[:, 1].max()
    height = y1 - y0
    if trx - tlx <= height or abs(try_ - tly) > 0.1 * (trx - tlx):  # vertical or slanted text
        return text
    band = gray[int(y0 + BAND * height) : int(y1 - BAND * height) + 1, max(int(x0), 0) : int(x1) + 1]
    if band.size == 0:
        return text
    lo, hi = np.percentile(band, 5), np.percentile(band, 95)
    if hi - lo < 20:  # no contrast to tell ink from paper
        return text
    runs = _blank_runs((band < (lo + hi) / 2).any(axis=0))
    letter_gaps = [w for _, w in runs if w < 0.25 * height] or [1]
    threshold = max(WORD_GAP_LETTERS * float(np.median(letter_gaps)), WORD_GAP_HEIGHT * height, 2.0)
    centers = [float(np.mean([pt[0] for pt in box])) - max(int(x0), 0) for box in char_boxes]
    pairs = [k for k in range(len(chars) - 1) if " " not in chars[k : k + 2]]
    pitch = {k: centers[k + 1] - centers[k] for k in pairs}

    def wide(i: int) -> bool:  # further apart than the letters around them (capitals are wider than small letters)
        near = [pitch[k] for k in pairs if k != i and abs(k - i) <= PITCH_WINDOW]
        return not near or pitch[i] >= WORD_PITCH * float(np.median(near))

    after: set[int] = set()  # indices of characters a space goes after
    for start, width in runs:
        if width < threshold:
            continue
        mid = start + width / 2
        i = max((k for k, c in enumerate(centers) if c < mid), default=-1)
        if i in pitch and wide(i):
            after.add(i)
    return "".join(c + (" " if i in after else "") for i, c in enumerate(chars))


@dataclass
class RapidOcrBundle:
    """``engine``: a ``RapidOCR`` instance; ``read(rgb_uint8_hwc)`` -> [(polygon 4x[x, y], text, score)],
    the text with its word spaces restored (``word_spaced``)."""

    engine: Any

    def read(self, rgb: Any) -> list[tuple[list[list[float]], str, float]]:
        bgr = rgb[:, :, ::-1].copy()  # RapidOCR takes arrays in OpenCV's BGR order
        engine = self.engine
        post = getattr(getattr(engine, "text_det", None), "postprocess_op", None)
        # any keyword resets these to RapidOCR's defaults: pass the configured ones along
        kwargs = {
            "box_thresh": getattr(post, "box_thresh", 0.5), "unclip_ratio": getattr(post, "unclip_ratio", 1.6),
            "text_score": getattr(engine, "text_score", 0.5), "return_word_box": True,
        }  # fmt: skip
        result, _ = engine(bgr, **kwargs)
        gray = rgb.astype("float32").mean(axis=2)
        lines = []
        for item in result or []:
            poly, text, score = [[float(x), float(y)] for x, y in item[0]], str(item[1]), float(item[2])
            if len(item) >= 5:
                try:
                    text = word_spaced(gray, poly, text, [str(c) for c in item[4]], item[3])
                except Exception as exc:  # noqa: BLE001 - the recognizer's text as it is
                    log.debug("no word spacing for %r: %s", text, exc)
            lines.append((poly, text, score))
        return lines


@register_loader(FAMILY, "rapidocr")
def load_rapidocr(checkpoint: str, device: str, dtype: Any, options: dict[str, Any]) -> RapidOcrBundle:
    """RapidOCR with the models from its wheel (``builtin``) or a RapidOCR config file."""
    try:
        from rapidocr_onnxruntime import RapidOCR
    except ImportError:
        raise ToolError("ocr needs rapidocr-onnxruntime: pip install 'visagent[ocr]'") from None
    kwargs = dict(options)
    if checkpoint != "builtin":
        kwargs["config_path"] = checkpoint
    return RapidOcrBundle(RapidOCR(**kwargs))


class OcrInput(ToolInput):
    image: str = Field(description="image id, e.g. img_0")
    min_score: Prob = Field(default=0.5, description="drop lines recognized with a lower score")


class TextLine(Region):
    """A line of text. ``box``: [x0, y0, x1, y1] pixels; ``polygon``: the detected quadrilateral
    [[x, y] x 4] (clockwise from top-left); ``score``: recognition confidence in [0, 1]."""

    text: str
    polygon: list[list[float]]


class OcrOutput(ToolOutput):
    image: str
    lines: list[TextLine]

    @property
    def text(self) -> str:
        return "\n".join(line.text for line in self.lines)

    def observation(self) -> str:
        if not self.lines:
            return f"no text found on {self.image}"
        parts = "; ".join(f"{line.id}: {line.text!r}" for line in self.lines)
        return clip_text(f"{len(self.lines)} text line{'s' if len(self.lines) != 1 else ''} on {self.image}: {parts}")


def _reading_order(items: list[tuple[list[list[float]], str, float]]) -> list[tuple[list[list[float]], str, float]]:
    """Sort lines top to bottom; lines whose vertical centers are within half a line height are
    one row, read left to right."""
    def key(item: tuple[list[list[float]], str, float]) -> tuple[float, float]:
        ys = [p[1] for p in item[0]]
        return ((min(ys) + max(ys)) / 2, min(p[0] for p in item[0]))

    items = sorted(items, key=key)
    rows: list[list[Any]] = []
    for item in items:
        cy, _ = key(item)
        h = max(p[1] for p in item[0]) - min(p[1] for p in item[0])
        if rows and abs(key(rows[-1][0])[0] - cy) < max(h, 1.0) / 2:
            rows[-1].append(item)
        else:
            rows.append([item])
    return [it for row in rows for it in sorted(row, key=lambda i: key(i)[1])]


class Ocr(Tool):
    name = "ocr"
    description = "Read the text in an image (RapidOCR): lines with their text, box and confidence, in reading order."
    families = (FAMILY,)
    region_prefixes = ("ocr",)

    def run(self, input: OcrInput, ctx: Any) -> OcrOutput:  # noqa: A002
        import numpy as np

        try:
            image = ctx.image(input.image)
        except ToolError:
            raise
        except Exception as exc:  # noqa: BLE001 - MediaError: unknown id or a video
            raise ToolError(str(exc)) from None
        rgb = np.asarray(image.convert("RGB"))
        with ctx.model(FAMILY) as bundle:
            found = bundle.read(rgb)
        w, h = image.size
        lines = []
        for poly, text, score in _reading_order(found):
            if score < input.min_score or not text.strip():
                continue
            xs, ys = [p[0] for p in poly], [p[1] for p in poly]
            box = [max(0.0, min(xs)), max(0.0, min(ys)), min(float(w), max(xs)), min(float(h), max(ys))]
            lines.append(
                TextLine(
                    id=ctx.region_id("ocr", len(lines)), image=input.image, box=box,
                    score=min(max(score, 0.0), 1.0), label=text, text=text, polygon=poly,
                )  # fmt: skip
            )
        return OcrOutput(image=input.image, lines=lines)
