"""Draw grounded answers: cited boxes, masks and OCR lines on the images they belong to.

``render_answer(answer, media, path)`` writes one PNG: the image with the cited evidence drawn
(boxes with id, label and score; masks as translucent fills with outlines; OCR lines as boxes with
their text). Several images or video frames become one contact sheet, each tile captioned with its
id, source and timestamp. Drawing is done with ``supervision`` annotators.

Region dicts (``Evidence.region``, tool outputs in traces) follow ``visagent.tools.base.Region``:
``{"id", "image", "box": [x0, y0, x1, y1] original pixels, "score", "label"}`` plus optional
``"rle"`` (COCO run-length encoding ``{"size": [h, w], "counts": str | list[int]}``) for masks and
``"text"`` for OCR lines.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from visagent.errors import UsageError
from visagent.media import MediaStore
from visagent.types import Answer, MediaInfo

log = logging.getLogger(__name__)

#: largest tile side in a contact sheet (pixels); single images are drawn at full size
TILE = 480
#: at most this many tiles in one contact sheet (images with evidence come first)
MAX_TILES = 24
CAPTION_H = 22
PAD = 6


def iter_regions(value: Any) -> Iterator[dict[str, Any]]:
    """Every region-like dict (``id``, ``image``, ``box`` of 4 numbers) nested in ``value``."""
    if isinstance(value, Mapping):
        box = value.get("box")
        if (
            isinstance(value.get("id"), str)
            and isinstance(value.get("image"), str)
            and isinstance(box, (list, tuple))
            and len(box) == 4
        ):
            yield dict(value)
            return
        for v in value.values():
            yield from iter_regions(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from iter_regions(v)


def decode_rle(rle: Mapping[str, Any], height: int, width: int) -> np.ndarray:
    """COCO RLE (compressed string or uncompressed list counts) -> bool mask of shape (height, width)."""
    from pycocotools import mask as mask_utils

    size = list(rle.get("size") or [height, width])
    counts = rle.get("counts")
    if isinstance(counts, list):
        obj = mask_utils.frPyObjects({"size": size, "counts": counts}, size[0], size[1])
    elif isinstance(counts, (str, bytes)):
        obj = {"size": size, "counts": counts.encode() if isinstance(counts, str) else counts}
    else:
        raise ValueError(f"mask RLE has no usable counts (got {type(counts).__name__})")
    mask = mask_utils.decode(obj).astype(bool)
    if mask.shape != (height, width):  # a mask for another resolution: resize to the image
        mask = np.asarray(Image.fromarray(mask).resize((width, height), Image.NEAREST)).astype(bool)
    return mask


def region_label(region: Mapping[str, Any]) -> str:
    """``det_2_0 cat 0.87`` / ``ocr_1_3: "Hello"``."""
    parts = [str(region.get("id", ""))]
    text = region.get("text")
    if isinstance(text, str) and text:
        parts[0] += ":"
        parts.append(repr(text if len(text) <= 40 else text[:37] + "..."))
    elif region.get("label"):
        parts.append(str(region["label"]))
    score = region.get("score")
    if isinstance(score, (int, float)) and math.isfinite(score):
        parts.append(f"{score:.2f}")
    return " ".join(parts)


def annotate(image: Image.Image, regions: Sequence[Mapping[str, Any]], *, thickness: int | None = None) -> Image.Image:
    """A copy of ``image`` (RGB) with ``regions`` drawn: masks filled and outlined, boxes, labels."""
    import supervision as sv

    img = image.convert("RGB").copy()
    if not regions:
        return img
    w, h = img.size
    xyxy = np.array([[float(v) for v in r["box"]] for r in regions], dtype=np.float32).reshape(-1, 4)
    xyxy[:, [0, 2]] = xyxy[:, [0, 2]].clip(0, w - 1)
    xyxy[:, [1, 3]] = xyxy[:, [1, 3]].clip(0, h - 1)
    masks: list[np.ndarray | None] = []
    for r in regions:
        rle = r.get("rle")
        mask = None
        if isinstance(rle, Mapping):
            try:
                mask = decode_rle(rle, h, w)
            except Exception as exc:  # noqa: BLE001 - draw the box at least
                log.warning("cannot decode the mask of %s: %s", r.get("id"), exc)
        masks.append(mask)
    ids = np.arange(len(regions), dtype=int)
    scale = max(w, h) / 640
    thick = thickness or max(1, round(2 * scale))
    text_scale = max(0.35, 0.45 * scale)
    with_mask = [i for i, m in enumerate(masks) if m is not None]
    if with_mask:
        mdet = sv.Detections(
            xyxy=xyxy[with_mask],
            mask=np.stack([masks[i] for i in with_mask]),
            class_id=ids[with_mask],
        )
        img = sv.MaskAnnotator(opacity=0.4, color_lookup=sv.ColorLookup.CLASS).annotate(img, mdet)
        img = sv.PolygonAnnotator(thickness=thick, color_lookup=sv.ColorLookup.CLASS).annotate(img, mdet)
    det = sv.Detections(xyxy=xyxy, class_id=ids)
    img = sv.BoxAnnotator(thickness=thick, color_lookup=sv.ColorLookup.CLASS).annotate(img, det)
    img = sv.LabelAnnotator(
        text_scale=text_scale,
        text_padding=max(2, round(4 * scale)),
        color_lookup=sv.ColorLookup.CLASS,
        smart_position=len(regions) > 1,
    ).annotate(img, det, labels=[region_label(r) for r in regions])
    return img


def _caption(info: MediaInfo) -> str:
    text = info.id
    if info.timestamp is not None:
        text += f" @ {info.timestamp:.2f} s"
    if info.parent:
        text += f" of {info.parent}"
    elif info.source and info.source not in ("pil", "array", "bytes"):
        src = info.source if len(info.source) <= 40 else "..." + info.source[-37:]
        text += f"  {src}"
    return text


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # older Pillow
        return ImageFont.load_default()


def _video_first_frame(path: Path) -> Image.Image | None:
    try:
        import av

        with av.open(str(path)) as container:
            frame = next(container.decode(video=0), None)
            return None if frame is None else frame.to_image().convert("RGB")
    except Exception as exc:  # noqa: BLE001 - a tile placeholder instead
        log.warning("cannot decode a frame of %s: %s", path, exc)
        return None


def contact_sheet(tiles: Sequence[tuple[Image.Image, str]], tile: int = TILE) -> Image.Image:
    """Tiles (image, caption) -> one grid image; each tile fits in ``tile`` x ``tile`` + caption.

    ``tile`` shrinks to the largest image side when all images are smaller.
    Size: ``cols = ceil(sqrt(n))``, ``rows = ceil(n / cols)``; width ``cols * (tile + PAD) + PAD``,
    height ``rows * (tile + CAPTION_H + PAD) + PAD``.
    """
    n = len(tiles)
    if n == 0:
        raise UsageError("nothing to draw: the run has no images")
    tile = min(tile, max(max(img.size) for img, _ in tiles))
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    sheet = Image.new("RGB", (cols * (tile + PAD) + PAD, rows * (tile + CAPTION_H + PAD) + PAD), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    font = _font(14)
    for k, (img, caption) in enumerate(tiles):
        r, c = divmod(k, cols)
        x0 = PAD + c * (tile + PAD)
        y0 = PAD + r * (tile + CAPTION_H + PAD)
        thumb = img.copy()
        thumb.thumbnail((tile, tile), Image.LANCZOS)
        sheet.paste(thumb, (x0 + (tile - thumb.width) // 2, y0 + (tile - thumb.height) // 2))
        draw.text((x0 + 2, y0 + tile + 3), caption, fill=(20, 20, 20), font=font)
    return sheet


def cited_regions(answer: Answer) -> list[dict[str, Any]]:
    """The regions the answer cites (Evidence.region dicts), in citation order."""
    return [dict(ev.region) for ev in answer.evidence if ev.region]


def render_regions(media: MediaStore, regions: Iterable[Mapping[str, Any]], *, include_all: bool = True) -> Image.Image:
    """Draw ``regions`` on their images: one annotated image, or a contact sheet for several.

    With ``include_all`` every image of the run is shown (images with regions first, at most
    ``MAX_TILES``); otherwise only the images that carry regions.
    """
    tiles = [(image, caption) for _, image, caption in region_tiles(media, regions, include_all=include_all)]
    if not tiles:
        raise UsageError("nothing to draw: the run has no images or decodable video frames")
    if len(tiles) == 1:
        return tiles[0][0]
    return contact_sheet(tiles)


def region_tiles(
    media: MediaStore,
    regions: Iterable[Mapping[str, Any]],
    *,
    include_all: bool = True,
    draw: Callable[[Image.Image, str, list[dict[str, Any]]], Image.Image] | None = None,
) -> list[tuple[str, Image.Image, str]]:
    """``(media id, image with its regions drawn, caption)`` per image, in ``render_regions``'
    order (a video stands for itself by its first frame unless its frames are among the images).
    ``draw(image, media_id, regions) -> image`` replaces ``annotate`` (e.g. to highlight one)."""
    by_image: dict[str, list[dict[str, Any]]] = {}
    for r in regions:
        by_image.setdefault(str(r["image"]), []).append(dict(r))
    unknown = [i for i in by_image if i not in media]
    if unknown:
        log.warning("regions on unknown media %s are not drawn", ", ".join(unknown))
    ids = [i for i in by_image if i in media]
    if include_all or not ids:
        ids += [i for i in media.ids() if i not in ids]
    tiles: list[tuple[str, Image.Image, str]] = []
    for media_id in ids[:MAX_TILES]:
        info = media.info(media_id)
        if info.kind == "image":
            img = media.image(media_id)
        else:
            if any(media.info(j).parent == media_id for j in media.ids("image")):
                continue  # its frames are shown instead
            img = _video_first_frame(media.video_path(media_id))
            if img is None:
                continue
            info = info.model_copy(update={"timestamp": 0.0})
        found = by_image.get(media_id, [])
        tiles.append((media_id, draw(img, media_id, found) if draw is not None else annotate(img, found), _caption(info)))
    return tiles


def render_answer(answer: Answer, media: MediaStore, path: Path | str) -> None:
    """Write a PNG of the run's images with the answer's cited regions drawn.

    One image: the image at its own size with the evidence drawn. Several images or video frames:
    a contact sheet (see ``contact_sheet``) with ``id @ timestamp`` captions.
    """
    out = Path(path)
    if out.parent and not out.parent.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
    image = render_regions(media, cited_regions(answer))
    fmt = "JPEG" if out.suffix.lower() in (".jpg", ".jpeg") else "PNG"
    image.save(out, format=fmt)
    log.info("wrote %s (%dx%d)", out, image.width, image.height)
