"""Draw grounded answers: cited boxes, masks and OCR lines on the images they belong to.

``render_answer(answer, media, path)`` writes one PNG: the image with the cited evidence drawn
(boxes with id, label and score; masks as translucent fills with outlines; OCR lines as boxes with
their text). Several images or video frames become one contact sheet of packed rows (each tile
keeps its image's aspect ratio; no letterbox bands), each tile captioned with its id, source and
timestamp. Drawing is done with ``supervision`` annotators. Tracks (regions with ``points``
over time, see ``visagent.render_video``) are drawn as frames along their span with boxes and
trails plus a timeline, or as an annotated video (``.mp4`` / ``.webm``).

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
from visagent.render_video import is_track, timeline, track_sheet_tiles, tracks_in, with_timelines, write_track_video
from visagent.types import Answer, MediaInfo

log = logging.getLogger(__name__)

#: longest tile side in a contact sheet (pixels): images are scaled to fit between MIN_TILE and
#: TILE (smaller ones are enlarged, so captions fit); single images are drawn at full size
TILE = 480
MIN_TILE = 320
#: at most this many tiles in one contact sheet (images with evidence come first)
MAX_TILES = 24
CAPTION_H = 18
PAD = 3
#: the sheet shape (width / height) the column count aims at
SHEET_ASPECT = 1.5


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


def _row_counts(n: int, rows: int) -> list[int]:
    """``n`` tiles over ``rows`` rows, as even as can be, fuller rows first."""
    base, extra = divmod(n, rows)
    return [base + (r < extra) for r in range(rows)]


def sheet_layout(sizes: Sequence[tuple[int, int]], tile: int = TILE) -> tuple[int, list[tuple[int, list[int]]]]:
    """The layout of a contact sheet of images of ``sizes`` (width, height), in order:
    ``(sheet width, [(row height, [tile width, ...]), ...])``.

    Rows are packed: every row fills the sheet's width, its tiles share one height and keep their
    images' aspect ratios (no letterboxing). The tile height aimed at gives the images' median shape
    its longer side within ``[min(MIN_TILE, tile), tile]``; a row with fewer tiles is taller. The
    row count minimizes ``|log(sheet aspect / SHEET_ASPECT)| + 1.5 * max |log(row height / aimed)|``.
    """
    if not sizes:
        raise UsageError("nothing to draw: the run has no images")
    aspects = [w / h for w, h in sizes]
    median = sorted(aspects)[len(aspects) // 2]
    longest = max(min(max(max(w, h) for w, h in sizes), tile), min(MIN_TILE, tile))
    aimed = max(1.0, longest / median if median >= 1 else float(longest))
    n = len(sizes)
    best: tuple[float, int, list[tuple[int, list[int]]]] | None = None
    for n_rows in range(1, n + 1):
        counts = _row_counts(n, n_rows)
        starts = [sum(counts[:r]) for r in range(n_rows)]
        row_aspects = [sum(aspects[s : s + k]) for s, k in zip(starts, counts)]
        width = round(max(aimed * a + (k + 1) * PAD for a, k in zip(row_aspects, counts)))
        heights = [(width - (k + 1) * PAD) / a for a, k in zip(row_aspects, counts)]
        height = sum(h + CAPTION_H + PAD for h in heights) + PAD
        cost = abs(math.log(width / height / SHEET_ASPECT)) + 1.5 * max(abs(math.log(h / aimed)) for h in heights)
        if best is None or cost < best[0] - 1e-9:
            rows = []
            for s, k, h in zip(starts, counts, heights):
                widths = [max(1, round(h * a)) for a in aspects[s : s + k]]
                widths[-1] = max(1, width - (k + 1) * PAD - sum(widths[:-1]))  # the row ends at the sheet's edge
                rows.append((max(1, round(h)), widths))
            best = (cost, width, rows)
    assert best is not None
    return best[1], best[2]


def _fit_caption(text: str, font: Any, width: int) -> str:
    if font.getlength(text) <= width:
        return text
    while text and font.getlength(text + "...") > width:
        text = text[:-1]
    return text + "..."


def contact_sheet(tiles: Sequence[tuple[Image.Image, str]], tile: int = TILE) -> Image.Image:
    """Tiles (image, caption) -> one image, in rows packed by ``sheet_layout``: each image scaled
    to its tile, its caption below it, ``PAD`` pixels between tiles.

    Size: the layout's width; height ``sum(row height + CAPTION_H + PAD) + PAD``.
    """
    width, rows = sheet_layout([img.size for img, _ in tiles], tile)
    sheet = Image.new("RGB", (width, sum(h + CAPTION_H + PAD for h, _ in rows) + PAD), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    font = _font(13)
    images = iter(tiles)
    y = PAD
    for height, widths in rows:
        x = PAD
        for w in widths:
            img, caption = next(images)
            sheet.paste(img.convert("RGB").resize((w, height), Image.LANCZOS), (x, y))
            draw.text((x + 2, y + height + 2), _fit_caption(caption, font, w - 4), fill=(20, 20, 20), font=font)
            x += w + PAD
        y += height + CAPTION_H + PAD
    return sheet


def cited_regions(answer: Answer) -> list[dict[str, Any]]:
    """The regions the answer cites (Evidence.region dicts), in citation order."""
    return [dict(ev.region) for ev in answer.evidence if ev.region]


def render_regions(media: MediaStore, regions: Iterable[Mapping[str, Any]], *, include_all: bool = True) -> Image.Image:
    """Draw ``regions`` on their images: one annotated image, or a contact sheet for several.

    With ``include_all`` every image of the run is shown (images with regions first, at most
    ``MAX_TILES``); otherwise only the images that carry regions.
    """
    regions = [dict(r) for r in regions]
    tracks = tracks_in(regions)
    tiles: list[tuple[Image.Image, str]] = []
    groups: list[list[dict[str, Any]]] = []
    tracked: set[str] = set()
    for video_id in dict.fromkeys(str(t["image"]) for t in tracks):
        if video_id not in media or media.info(video_id).kind != "video":
            log.warning("tracks on unknown video %s are not drawn", video_id)
            continue
        try:
            mine = [t for t in tracks if t["image"] == video_id]
            tiles += track_sheet_tiles(media.video_path(video_id), video_id, mine)
            tracked.add(video_id)
        except Exception as exc:  # noqa: BLE001 - the video's first frame with the first boxes instead
            log.warning("cannot draw the tracks on %s: %s", video_id, exc)
            continue
        groups.append(mine)
    others = [r for r in regions if not is_track(r) or r["image"] not in tracked]
    if tracked and not others:
        include_all = False
    tiles += [
        (image, caption)
        for media_id, image, caption in region_tiles(media, others, include_all=include_all)
        if media_id not in tracked
    ]
    if not tiles:
        raise UsageError("nothing to draw: the run has no images or decodable video frames")
    sheet = tiles[0][0] if len(tiles) == 1 else contact_sheet(tiles)
    return with_timelines(sheet, [timeline(g, width=max(sheet.width, 480)) for g in groups])


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
    """Write a PNG of the run's images with the answer's cited regions drawn, or (``.mp4`` /
    ``.webm``) the video of the cited tracks with their boxes, ids and trails drawn.

    One image: the image at its own size with the evidence drawn. Several images or video frames:
    a contact sheet (see ``contact_sheet``) with ``id @ timestamp`` captions. Cited tracks: frames
    along their span with boxes and trails, and their timeline.
    """
    out = Path(path)
    if out.parent and not out.parent.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() in VIDEO_SUFFIXES:
        render_answer_video(answer, media, out)
        return
    image = render_regions(media, cited_regions(answer))
    fmt = "JPEG" if out.suffix.lower() in (".jpg", ".jpeg") else "PNG"
    image.save(out, format=fmt)
    log.info("wrote %s (%dx%d)", out, image.width, image.height)


VIDEO_SUFFIXES = (".mp4", ".webm")


def render_answer_video(answer: Answer, media: MediaStore, out: Path) -> None:
    """Write the video of the answer's cited tracks (the first video they lie on) with their boxes,
    ids and trails drawn (``visagent.render_video.write_track_video``)."""
    tracks = tracks_in(cited_regions(answer))
    if not tracks:
        raise UsageError(f"{out}: a video shows the cited tracks (trk_N_i ids) and the answer cites none; save a .png instead")
    videos = list(dict.fromkeys(str(t["image"]) for t in tracks))
    if len(videos) > 1:
        log.warning("the answer cites tracks on %s; %s shows those on %s", ", ".join(videos), out, videos[0])
    if videos[0] not in media:
        raise UsageError(f"{out}: the cited tracks lie on {videos[0]}, which this run does not have")
    write_track_video(media.video_path(videos[0]), [t for t in tracks if t["image"] == videos[0]], out)
