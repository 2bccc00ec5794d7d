"""Draw tracks (regions with sightings over time) on their video: annotated video files, frames
with trails, and timelines.

A track is a region dict (``Evidence.region``, a ``track`` tool output in a trace; a
``segment_video`` object's ``"frames"`` serve the same way, drawn as boxes) with ``"points"``: ``[{"time": seconds from the start of the video, "frame": index, "box": [x0, y0, x1,
y1] frame pixels, "score"}]`` in time order, plus ``id``, ``image`` (the video id), ``label``,
``first_seen`` / ``last_seen`` (seconds).

- ``write_track_video(path, tracks, out)``: the video (or the span of its tracks) re-encoded with
  PyAV, each track's box, id and label drawn while it is seen, and its trail (the centres of its
  boxes so far); ``.mp4`` is H.264 (``libx264``), ``.webm`` VP8 (``libvpx``, what browsers without
  H.264 play). Frames are scaled to at most ``max_side`` pixels (even sizes), at most
  ``max_frames`` frames are written, every ``step``-th frame when the range is longer.
- ``track_frame(image, tracks, t)``: one frame with the boxes seen near ``t`` and the trails so far.
- ``timeline(tracks, start, end)``: one bar per track over time (PNG image), ``timeline_svg``: the
  same as inline SVG (for the HTML report).

A track's box is drawn at a frame when a sighting lies within ``hold`` seconds before it (half the
track's typical gap between sightings, at least half a frame), so a track sampled at a lower rate
than the video stays visible between its sightings.
"""

from __future__ import annotations

import html
import logging
from collections.abc import Mapping, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from visagent.errors import UsageError

log = logging.getLogger(__name__)

#: longest side (pixels) of written videos, most frames written
MAX_SIDE = 640
MAX_FRAMES = 900
TRAIL = 60  # most trail points drawn per track
CODECS = {".mp4": ("libx264", "yuv420p"), ".webm": ("libvpx", "yuv420p")}


def sightings(region: Mapping[str, Any]) -> list[Mapping[str, Any]] | None:
    """A region's sightings over time: its ``points`` (``track``) or ``frames`` (``segment_video``
    objects), each a dict with ``time`` and ``box``; None when it has neither."""
    for key in ("points", "frames"):
        items = region.get(key)
        if isinstance(items, list) and items and all(isinstance(p, Mapping) and "time" in p and "box" in p for p in items):
            return items
    return None


def is_track(region: Mapping[str, Any]) -> bool:
    """A region with sightings over time (see ``sightings``)."""
    return sightings(region) is not None


def tracks_in(regions: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The regions with sightings over time, each with them as ``points``."""
    return [dict(r, points=list(sightings(r) or [])) for r in regions if is_track(r)]


def _color(i: int) -> tuple[int, int, int]:
    import supervision as sv

    return sv.ColorPalette.DEFAULT.by_idx(i).as_rgb()


def _font(size: int) -> Any:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # older Pillow
        return ImageFont.load_default()


def _hold(track: Mapping[str, Any]) -> float:
    times = [float(p["time"]) for p in track["points"]]
    gaps = sorted(b - a for a, b in zip(times, times[1:]) if b > a)
    typical = gaps[len(gaps) // 2] if gaps else 0.04
    return max(typical * 0.75, 0.02)


def _seen_at(track: Mapping[str, Any], t: float, hold: float) -> Mapping[str, Any] | None:
    """The sighting shown at ``t``: the last one at or before ``t`` within ``hold`` seconds."""
    best = None
    for p in track["points"]:
        if float(p["time"]) <= t + 1e-6:
            best = p
        else:
            break
    if best is None or t - float(best["time"]) > hold:
        return None
    return best


def track_frame(
    image: Image.Image, tracks: Sequence[Mapping[str, Any]], t: float, *, colors: Sequence[int] | None = None
) -> Image.Image:
    """``image`` (the frame at ``t`` seconds) with each track's trail up to ``t`` and its box, id
    and label where it is seen near ``t``. ``colors``: a palette index per track (default: its position)."""
    img = image.convert("RGB").copy()
    draw = ImageDraw.Draw(img)
    scale = max(img.size) / 640
    width = max(1, round(2 * scale))
    font = _font(max(9, round(14 * scale)))
    for i, track in enumerate(tracks):
        color = _color(colors[i] if colors is not None else i)
        past = [p for p in track["points"] if float(p["time"]) <= t + 1e-6][-TRAIL:]
        centres = [((p["box"][0] + p["box"][2]) / 2, (p["box"][1] + p["box"][3]) / 2) for p in past]
        if len(centres) > 1:
            draw.line(centres, fill=color, width=width)
        seen = _seen_at(track, t, _hold(track))
        if seen is None:
            continue
        x0, y0, x1, y1 = (float(v) for v in seen["box"])
        draw.rectangle([x0, y0, x1, y1], outline=color, width=width)
        text = f"{track.get('id', '')} {track.get('label') or ''}".strip()
        tw = draw.textlength(text, font=font)
        ty = max(0.0, y0 - font.size - 4)
        draw.rectangle([x0, ty, x0 + tw + 4, ty + font.size + 3], fill=color)
        draw.text((x0 + 2, ty + 1), text, fill=(255, 255, 255), font=font)
    return img


def _scaled(size: tuple[int, int], max_side: int) -> tuple[int, int]:
    w, h = size
    f = min(1.0, max_side / max(w, h))
    return max(2, int(w * f) // 2 * 2), max(2, int(h * f) // 2 * 2)


def write_track_video(
    video: str | Path,
    tracks: Sequence[Mapping[str, Any]],
    out: str | Path,
    *,
    start: float | None = None,
    end: float | None = None,
    max_side: int = MAX_SIDE,
    max_frames: int = MAX_FRAMES,
) -> int:
    """Write ``video`` with ``tracks`` drawn to ``out`` (``.mp4`` or ``.webm``; see the module
    docstring). ``start`` / ``end``: seconds (default: the tracks' span, a second either side,
    within the video). Returns the number of frames written."""
    import av

    from visagent.tools.video import iter_frames, probe

    out = Path(out)
    codec = CODECS.get(out.suffix.lower())
    if codec is None:
        raise UsageError(f"{out}: an annotated video is written as .mp4 or .webm, not {out.suffix or 'no suffix'}")
    meta = probe(str(video))
    if tracks:
        first = min(float(t["points"][0]["time"]) for t in tracks)
        last = max(float(t["points"][-1]["time"]) for t in tracks)
    else:
        first, last = 0.0, meta.duration
    lo = max(0.0, first - 1.0) if start is None else max(0.0, start)
    hi = min(meta.duration, last + 1.0) if end is None else min(meta.duration, end)
    rate = meta.fps or 25.0
    expected = max(1, int((hi - lo) * rate) + 1)
    stride = max(1, -(-expected // max_frames))
    size = _scaled((meta.width, meta.height), max_side)
    fx, fy = size[0] / max(meta.width, 1), size[1] / max(meta.height, 1)
    scaled = [_scale_track(t, fx, fy) for t in tracks]
    out.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    fps_out = Fraction(rate / stride).limit_denominator(1001)
    with av.open(str(out), "w") as container:
        stream = container.add_stream(codec[0], rate=fps_out)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], codec[1]
        if codec[0] == "libvpx":
            stream.bit_rate = 1_500_000
        for frame in iter_frames(str(video), stride=stride, start=lo, end=hi if hi > lo else None, max_frames=max_frames):
            img = track_frame(frame.image.convert("RGB").resize(size, Image.BILINEAR), scaled, frame.timestamp)
            vf = av.VideoFrame.from_image(img)
            vf.pts = written
            vf.time_base = 1 / fps_out
            for packet in stream.encode(vf):
                container.mux(packet)
            written += 1
        for packet in stream.encode():
            container.mux(packet)
    if written == 0:
        raise UsageError(f"{video}: no frame between {lo:.2f} and {hi:.2f} s to draw the tracks on")
    log.info("wrote %s (%d frames, %dx%d)", out, written, *size)
    return written


def _scale_track(track: Mapping[str, Any], fx: float, fy: float) -> dict[str, Any]:
    out = dict(track)
    out["points"] = [
        dict(p, box=[p["box"][0] * fx, p["box"][1] * fy, p["box"][2] * fx, p["box"][3] * fy]) for p in track["points"]
    ]
    return out


def _span(tracks: Sequence[Mapping[str, Any]], start: float | None, end: float | None) -> tuple[float, float]:
    lo = min(float(t["points"][0]["time"]) for t in tracks) if start is None else start
    hi = max(float(t["points"][-1]["time"]) for t in tracks) if end is None else end
    return lo, max(hi, lo + 1e-3)


def timeline(
    tracks: Sequence[Mapping[str, Any]], start: float | None = None, end: float | None = None, width: int = 720
) -> Image.Image:
    """One row per track: its id and label, a bar from first to last sighting, a tick per sighting;
    a time axis in seconds below. Size: ``width`` x (22 per track + 30)."""
    if not tracks:
        raise UsageError("no tracks to draw a timeline of")
    lo, hi = _span(tracks, start, end)
    font = _font(12)
    left, row = 150, 22
    img = Image.new("RGB", (width, row * len(tracks) + 30), (255, 255, 255))
    draw = ImageDraw.Draw(img)

    def x(t: float) -> float:
        return left + (width - left - 10) * (t - lo) / (hi - lo)

    for i, track in enumerate(tracks):
        color = _color(i)
        y = i * row + 4
        draw.text((4, y + 2), f"{track.get('id', '')} {track.get('label') or ''}"[:24], fill=(20, 20, 20), font=font)
        t0, t1 = float(track["points"][0]["time"]), float(track["points"][-1]["time"])
        light = tuple((c + 2 * 255) // 3 for c in color)
        draw.rectangle([x(t0), y + 4, max(x(t1), x(t0) + 2), y + row - 6], fill=light, outline=color)
        for p in track["points"]:
            px = x(float(p["time"]))
            draw.line([px, y + 1, px, y + row - 3], fill=(40, 40, 40), width=1)
    axis = row * len(tracks) + 6
    draw.line([left, axis, width - 10, axis], fill=(90, 90, 90), width=1)
    for k in range(6):
        t = lo + (hi - lo) * k / 5
        draw.line([x(t), axis, x(t), axis + 4], fill=(90, 90, 90))
        draw.text((x(t) - 10, axis + 6), f"{t:.1f}s", fill=(60, 60, 60), font=font)
    return img


def timeline_svg(tracks: Sequence[Mapping[str, Any]], start: float | None = None, end: float | None = None, width: int = 720,
                 cited: Sequence[str] = ()) -> str:  # fmt: skip
    """The timeline as an inline ``<svg class="timeline">``: a ``<g class="track" data-id=...>`` per
    track with its bar (``rect``, a ``<title>`` of its span) and a tick per sighting; cited tracks
    get the ``cited`` class. Text is escaped."""
    if not tracks:
        return ""
    lo, hi = _span(tracks, start, end)
    left, row = 150, 22
    height = row * len(tracks) + 30

    def x(t: float) -> float:
        return round(left + (width - left - 10) * (t - lo) / (hi - lo), 1)

    parts = [
        f'<svg class="timeline" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}">'
    ]
    for i, track in enumerate(tracks):
        r, g, b = _color(i)
        y = i * row + 4
        tid = html.escape(str(track.get("id", "")), quote=True)
        label = html.escape(str(track.get("label") or ""))
        t0, t1 = float(track["points"][0]["time"]), float(track["points"][-1]["time"])
        cls = "track cited" if track.get("id") in cited else "track"
        parts.append(f'<g class="{cls}" data-id="{tid}">')
        parts.append(f'<text x="4" y="{y + 14}" font-size="12" font-family="monospace">{tid} {label}</text>')
        parts.append(
            f'<rect x="{x(t0)}" y="{y + 4}" width="{max(x(t1) - x(t0), 2)}" height="{row - 10}" fill="rgb({r},{g},{b})" '
            f'fill-opacity="0.55" stroke="rgb({r},{g},{b})"><title>{tid} {label}: {t0:.2f}-{t1:.2f} s, '
            f"{len(track['points'])} boxes</title></rect>"
        )
        ticks = "".join(f"M{x(float(p['time']))} {y + 2}v{row - 6}" for p in track["points"])
        parts.append(f'<path d="{ticks}" stroke="#333" stroke-width="1"/></g>')
    axis = row * len(tracks) + 6
    parts.append(f'<line x1="{left}" y1="{axis}" x2="{width - 10}" y2="{axis}" stroke="#666"/>')
    for k in range(6):
        t = lo + (hi - lo) * k / 5
        parts.append(f'<text x="{x(t) - 10}" y="{axis + 18}" font-size="11">{t:.1f}s</text>')
    parts.append("</svg>")
    return "".join(parts)


def track_sheet_tiles(
    video: str | Path, video_id: str, tracks: Sequence[Mapping[str, Any]], n: int = 6
) -> list[tuple[Image.Image, str]]:
    """Tiles for a contact sheet of ``tracks`` on their video: ``n`` frames evenly over the tracks'
    span with boxes and trails (``track_frame``). Captions: ``vid_0 @ 1.20 s``."""
    from visagent.tools.video import read_frames_at

    lo, hi = _span(tracks, None, None)
    times = [lo + (hi - lo) * k / max(n - 1, 1) for k in range(n)] if hi - lo > 1e-3 else [lo]
    from visagent.tools.video import probe

    origin = probe(str(video)).start
    frames = read_frames_at(str(video), [origin + t for t in times])
    return [(track_frame(f.image, tracks, t), f"{video_id} @ {t:.2f} s") for f, t in zip(frames, times)]


def with_timelines(sheet: Image.Image, timelines: Sequence[Image.Image]) -> Image.Image:
    """``sheet`` with each timeline below it, drawn at the sheet's width."""
    if not timelines:
        return sheet
    width = max(sheet.width, 480)
    parts = list(timelines)
    height = sheet.height + sum(t.height for t in parts) + 4 * len(parts)
    out = Image.new("RGB", (width, height), (255, 255, 255))
    out.paste(sheet, (0, 0))
    y = sheet.height + 4
    for t in parts:
        out.paste(t, (0, y))
        y += t.height + 4
    return out
