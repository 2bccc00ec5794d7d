"""``ocr``: read the text lines of an image with RapidOCR.

Backend ``rapidocr`` (family ``ocr``, checkpoint ``builtin``): ``rapidocr_onnxruntime.RapidOCR``,
whose wheel ships the PP-OCRv4 detection, direction-classification and recognition ONNX models
(real weights, no download). ``options`` are passed to ``RapidOCR(**options)`` (e.g.
``{"text_score": 0.5}``); a checkpoint other than ``builtin`` is a RapidOCR YAML config file
(``config_path``) pointing at other models.

Lines come back in reading order (top to bottom, then left to right), each with an id
``ocr_<n>_<i>``, the text, the axis-aligned box [x0, y0, x1, y1] in original-image pixels (the
bounding box of the detected quadrilateral, also kept as ``polygon``) and the recognition score.
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


@dataclass
class RapidOcrBundle:
    """``engine``: a ``RapidOCR`` instance; ``read(rgb_uint8_hwc)`` -> [(polygon 4x[x, y], text, score)]."""

    engine: Any

    def read(self, rgb: Any) -> list[tuple[list[list[float]], str, float]]:
        bgr = rgb[:, :, ::-1].copy()  # RapidOCR takes arrays in OpenCV's BGR order
        result, _ = self.engine(bgr)
        return [([[float(x), float(y)] for x, y in poly], str(text), float(score)) for poly, text, score in result or []]


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
