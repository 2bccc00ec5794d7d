"""A self-contained HTML report of one run.

``write_report(answer, media, path)`` writes one HTML file with every image inlined (base64 JPEG):
the question and media (a video by its first sampled frame, else the frame at its middle, and
played by a ``<video>`` element: a WebM (VP8) copy, inlined, with the run's tracks drawn), each
step (planner thought and action with arguments; tool observation, time, models and cache hits,
thumbnails with the step's boxes/masks/OCR lines drawn, a timeline of its tracks as inline SVG;
errors and notes), and the final answer with its cited evidence highlighted (``.cited``) and drawn. The file
needs no network and no other file.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import math
from pathlib import Path
from typing import Any

from PIL import Image

from visagent import ids
from visagent.media import MediaStore, video_poster
from visagent.render import annotate, iter_regions, region_label, render_regions
from visagent.render_video import sightings, timeline_svg, tracks_in, write_track_video
from visagent.secrets import scrub
from visagent.types import Answer, ToolStep

log = logging.getLogger(__name__)

#: longest side of a step thumbnail (pixels) and most thumbnails per step
THUMB = 360
MAX_THUMBS = 8
#: the played copy of a video: longest side (pixels), most frames, largest encoded size (bytes)
VIDEO_SIDE = 480
VIDEO_FRAMES = 600
VIDEO_BYTES = 12 * 1024 * 1024

TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>visagent report: {{ question }}</title>
<style>
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;background:#f5f6f8;color:#1d232b}
main{max-width:1100px;margin:0 auto;padding:20px}
h1{font-size:20px;margin:0 0 4px} h2{font-size:16px;margin:24px 0 8px}
.meta{color:#5b6573;font-size:12px}
.card{background:#fff;border:1px solid #dde1e6;border-radius:8px;padding:12px 14px;margin:10px 0}
.answer{border-left:5px solid #2f9e44} .answer.failed{border-left-color:#e03131}
.answer .text{font-size:18px;font-weight:600}
.step{border-left:5px solid #adb5bd} .step.tool{border-left-color:#1c7ed6}
.step.planner{border-left-color:#7048e8} .step.error{border-left-color:#e03131}
.step.final{border-left-color:#2f9e44} .step.note{border-left-color:#f59f00}
.step h3{font-size:14px;margin:0 0 6px;display:flex;gap:10px;align-items:baseline}
.badge{font-size:11px;padding:1px 6px;border-radius:10px;background:#e9ecef;color:#343a40}
.badge.cache{background:#d3f9d8} .badge.model{background:#e7f5ff}
pre{background:#f1f3f5;padding:6px 8px;border-radius:4px;white-space:pre-wrap;word-break:break-word;margin:4px 0;font-size:12px}
.thumbs{display:flex;flex-wrap:wrap;gap:8px;margin-top:6px}
figure{margin:0} figcaption{font-size:11px;color:#5b6573}
img.thumb{max-width:{{ thumb }}px;max-height:{{ thumb }}px;border:1px solid #dde1e6;border-radius:4px}
video.video{max-width:{{ thumb }}px;max-height:{{ thumb }}px;border:1px solid #dde1e6;border-radius:4px;background:#000}
.timeline-wrap{overflow-x:auto;margin-top:6px} svg.timeline .track.cited rect{stroke-width:3}
table{border-collapse:collapse;width:100%;font-size:12px} td,th{padding:3px 6px;border-bottom:1px solid #eef0f2;text-align:left}
.cited{background:#fff3bf;font-weight:600}
.region-id{font-family:ui-monospace,Menlo,monospace}
</style></head>
<body><main>
<h1 id="question">{{ question }}</h1>
{% if turns|length > 1 %}<div class="meta">earlier turns: {% for t in turns[:-1] %}&ldquo;{{ t }}&rdquo; {% endfor %}</div>{% endif %}
<div class="meta">run {{ meta.run_id }} &middot; planner {{ meta.planner }} &middot; profile {{ profile }}
 &middot; {{ "%.0f"|format(meta.ms or 0) }} ms &middot; {{ steps|length }} steps, {{ n_tools }} tool calls</div>

<section class="card answer {{ 'failed' if not ok }}" id="answer">
<div class="meta">answer ({{ status }})</div>
<div class="text">{{ answer.answer or "(no answer)" }}</div>
{% if answer.error %}<div>error: {{ answer.error }}</div>{% endif %}
{% for w in answer.warnings %}<div class="meta">warning: {{ w }}</div>{% endfor %}
{% if evidence %}
<h2>Evidence</h2>
<table id="evidence"><tr><th>id</th><th>tool</th><th>step</th><th>what</th></tr>
{% for ev in evidence %}<tr class="cited"><td class="region-id">{{ ev.id }}</td><td>{{ ev.tool }}</td>
<td><a href="#step-{{ ev.step }}">{{ ev.step }}</a></td><td>{{ ev.what }}</td></tr>{% endfor %}
</table>
{% endif %}
{% if evidence_image %}<div class="thumbs"><figure><img class="thumb evidence-image" alt="cited evidence" src="{{ evidence_image }}">
<figcaption>cited evidence</figcaption></figure></div>{% endif %}
</section>

<h2>Media</h2>
<div class="thumbs" id="media">{% for m in media %}<figure><img class="thumb" alt="{{ m.id }}" src="{{ m.src }}">
<figcaption>{{ m.caption }}</figcaption></figure>{% if m.video %}<figure><video class="video" data-id="{{ m.id }}" controls muted loop
playsinline preload="auto"{% if m.src %} poster="{{ m.src }}"{% endif %} src="{{ m.video }}"></video>
<figcaption>{{ m.id }} played{{ " with its tracks drawn" if m.tracked }}</figcaption></figure>{% endif %}{% endfor %}</div>

<h2>Steps</h2>
{% for s in steps %}
<section class="card step {{ s.type }}" id="step-{{ s.index }}" data-step="{{ s.index }}">
<h3><span>#{{ s.index }} {{ s.title }}</span>{% if s.ms is not none %}<span class="badge">{{ "%.1f"|format(s.ms) }} ms</span>{% endif %}
{% for m in s.models %}<span class="badge model">{{ m }}</span>{% endfor %}
{% for k, v in s.cache.items() %}<span class="badge cache">{{ k }}: {{ v }}</span>{% endfor %}</h3>
{% if s.thought %}<div><b>thought</b> {{ s.thought }}</div>{% endif %}
{% if s.args is not none %}<div><b>arguments</b></div><pre>{{ s.args }}</pre>{% endif %}
{% if s.text %}<div><b>{{ s.text_label }}</b></div><pre>{{ s.text }}</pre>{% endif %}
{% if s.regions %}<table class="regions">{% for r in s.regions %}<tr class="{{ 'cited' if r.cited }}"><td class="region-id">{{ r.id }}</td><td>{{ r.what }}</td></tr>{% endfor %}</table>{% endif %}
{% if s.timeline %}<div class="timeline-wrap">{{ s.timeline|safe }}</div>{% endif %}
{% if s.thumbs %}<div class="thumbs">{% for t in s.thumbs %}<figure><img class="thumb" alt="{{ t.caption }}" src="{{ t.src }}"><figcaption>{{ t.caption }}</figcaption></figure>{% endfor %}</div>{% endif %}
</section>
{% endfor %}
<div class="meta">versions: {{ versions }} &middot; checkpoints: {{ checkpoints }}</div>
</main></body></html>
"""


def data_uri(image: Image.Image, max_side: int = THUMB) -> str:
    """A JPEG ``data:`` URI of ``image`` shrunk to at most ``max_side`` pixels."""
    thumb = image.convert("RGB")
    if max(thumb.size) > max_side:
        thumb = thumb.copy()
        thumb.thumbnail((max_side, max_side), Image.LANCZOS)
    buf = io.BytesIO()
    thumb.save(buf, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _region_what(r: dict[str, Any]) -> str:
    box = ", ".join(f"{float(v):.0f}" for v in r.get("box", []))
    points = sightings(r)
    if points:
        return (
            f"{region_label(r)} on {r.get('image')}: {float(points[0]['time']):.2f}-{float(points[-1]['time']):.2f} s, "
            f"{len(points)} boxes, first box [{box}]"
        )
    return f"{region_label(r)} box [{box}] on {r.get('image')}"


def _video_src(media: MediaStore, video_id: str, tracks: list[dict[str, Any]]) -> str:
    """A ``data:video/webm`` URI of the video (VP8, at most ``VIDEO_SIDE`` pixels and
    ``VIDEO_FRAMES`` frames) with ``tracks`` drawn; "" when it cannot be made or is over
    ``VIDEO_BYTES``."""
    import tempfile

    try:
        with tempfile.TemporaryDirectory(prefix="visagent-report-") as tmp:
            out = Path(tmp) / "video.webm"
            path = media.video_path(video_id)
            write_track_video(path, tracks, out, start=0.0, end=math.inf, max_side=VIDEO_SIDE, max_frames=VIDEO_FRAMES)
            data = out.read_bytes()
    except Exception as exc:  # noqa: BLE001 - a report without the played video
        log.warning("no played copy of %s: %s", video_id, exc)
        return ""
    if len(data) > VIDEO_BYTES:
        log.warning("the played copy of %s is %d bytes, over %d: left out of the report", video_id, len(data), VIDEO_BYTES)
        return ""
    return "data:video/webm;base64," + base64.b64encode(data).decode("ascii")


def _media_ids_in(value: Any) -> list[str]:
    found: list[str] = []
    if isinstance(value, str) and ids.MEDIA_RE.match(value):
        found.append(value)
    elif isinstance(value, dict):
        for v in value.values():
            found += _media_ids_in(v)
    elif isinstance(value, list):
        for v in value:
            found += _media_ids_in(v)
    return found


def _caption(media: MediaStore, media_id: str) -> str:
    info = media.info(media_id)
    text = media_id
    if info.timestamp is not None:
        text += f" @ {info.timestamp:.2f} s"
    return text


def _tool_thumbs(step: ToolStep, media: MediaStore, inputs: set[str]) -> list[dict[str, str]]:
    thumbs: list[dict[str, str]] = []
    by_image: dict[str, list[dict[str, Any]]] = {}
    for r in iter_regions(step.output):
        by_image.setdefault(r["image"], []).append(r)
    for media_id, regions in by_image.items():
        if media_id in media and media.info(media_id).kind == "image":
            thumbs.append({"src": data_uri(annotate(media.image(media_id), regions)), "caption": _caption(media, media_id)})
    # images the step produced (e.g. video frames) or looked at without regions
    for media_id in dict.fromkeys(_media_ids_in(step.output) + _media_ids_in(step.args)):
        if media_id in by_image or media_id not in media or media.info(media_id).kind != "image":
            continue
        if media_id in inputs and _media_ids_in(step.output):
            continue  # an input image the step only mentions
        thumbs.append({"src": data_uri(media.image(media_id)), "caption": _caption(media, media_id)})
    return thumbs[:MAX_THUMBS]


def _video_thumb(media: MediaStore, video_id: str) -> str:
    """A data URI of the video's first registered frame, else of the frame at its middle; "" when
    neither can be had."""
    frame = next((i for i in media.ids("image") if media.info(i).parent == video_id), None)
    try:
        image = media.image(frame) if frame else video_poster(media.video_path(video_id))
        return data_uri(image)
    except Exception as exc:  # noqa: BLE001 - a report without this thumbnail
        log.warning("no thumbnail for %s: %s", video_id, exc)
        return ""


def report_html(answer: Answer, media: MediaStore) -> str:
    """The report as one HTML string (see the module docstring)."""
    import jinja2

    trace = answer.trace
    cited = {ev.id for ev in answer.evidence}
    inputs = {i.id for i in trace.meta.media}
    steps: list[dict[str, Any]] = []
    tracks_by_video: dict[str, list[dict[str, Any]]] = {}
    for s in trace.steps:
        row: dict[str, Any] = {
            "index": s.index, "type": s.type, "title": s.type, "ms": None, "models": [], "cache": {},
            "thought": "", "args": None, "text": "", "text_label": "", "regions": [], "thumbs": [], "timeline": "",
        }  # fmt: skip
        if s.type == "planner":
            act = s.action
            row.update(ms=s.ms, thought=s.thought)
            if act.kind == "final":
                row.update(title="plan: final answer", text=act.answer, text_label="answer")
                if act.evidence:
                    row["args"] = json.dumps({"evidence": act.evidence})
            else:
                row.update(title=f"plan: {act.tool}", args=json.dumps(act.args, indent=1))
            if s.tokens:
                row["title"] += f" ({s.tokens} tokens)"
        elif s.type == "tool":
            row.update(
                title=f"tool {s.tool} (call {s.call})", ms=s.ms, models=s.models, cache=s.cache,
                args=json.dumps(s.args, indent=1), text=s.observation, text_label="observation",
            )  # fmt: skip
            row["regions"] = [
                {"id": r["id"], "what": _region_what(r), "cited": r["id"] in cited} for r in iter_regions(s.output)
            ][:200]
            step_tracks = tracks_in(list(iter_regions(s.output)))
            if step_tracks:
                tracks_by_video.setdefault(str(step_tracks[0]["image"]), []).extend(step_tracks)
                row["timeline"] = timeline_svg(step_tracks[:200], cited=sorted(cited))
            try:
                row["thumbs"] = _tool_thumbs(s, media, inputs)
            except Exception as exc:  # noqa: BLE001 - a report without this thumbnail
                log.warning("no thumbnail for step %d: %s", s.index, exc)
        elif s.type == "error":
            row.update(title=f"error ({s.source})" + (f" in {s.tool}" if s.tool else ""), text=s.message, text_label="message")
            if s.args is not None:
                row["args"] = json.dumps(s.args, indent=1, default=str)
        elif s.type == "final":
            row.update(title="final answer", text=s.answer, text_label="answer")
            if s.evidence:
                row["args"] = json.dumps({"evidence": s.evidence})
        else:
            row.update(text=getattr(s, "message", ""), text_label="note")
        steps.append(row)
    evidence = []
    for ev in answer.evidence:
        what = _region_what(ev.region) if ev.region else ev.observation
        evidence.append({"id": ev.id, "tool": ev.tool, "step": ev.step, "what": what})
    evidence_image = ""
    regions = [ev.region for ev in answer.evidence if ev.region]
    if regions:
        try:
            evidence_image = data_uri(render_regions(media, regions, include_all=False), max_side=900)
        except Exception as exc:  # noqa: BLE001
            log.warning("cannot draw the evidence: %s", exc)
    media_rows = []
    for media_id in media.ids():
        info = media.info(media_id)
        if info.kind != "image" or info.parent:
            if info.kind == "video":
                src = _video_thumb(media, media_id)
                tracks = tracks_by_video.get(media_id, [])
                media_rows.append({
                    "id": media_id, "src": src, "caption": f"{media_id} video {info.source}",
                    "video": _video_src(media, media_id, tracks), "tracked": bool(tracks),
                })  # fmt: skip
            continue
        media_rows.append({"id": media_id, "src": data_uri(media.image(media_id)), "caption": f"{media_id} {info.source}",
                           "video": "", "tracked": False})  # fmt: skip
    media_rows = [m for m in media_rows if m["src"] or m["video"]] or media_rows
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    return env.from_string(TEMPLATE).render(
        question=trace.meta.question or "(no question)",
        turns=trace.meta.turns,
        meta=trace.meta,
        profile=trace.meta.config.get("profile", ""),
        answer=answer,
        ok=answer.ok,
        status=answer.status,
        evidence=evidence,
        evidence_image=evidence_image,
        media=media_rows,
        steps=steps,
        n_tools=len(trace.tool_steps()),
        thumb=THUMB,
        versions=", ".join(f"{k} {v}" for k, v in trace.meta.versions.items()),
        checkpoints=", ".join(f"{k}: {v}" for k, v in trace.meta.checkpoints.items()),
    )


def write_report(answer: Answer, media: MediaStore, path: Path | str) -> None:
    """Write the HTML report of ``answer`` (its trace) over the run's ``media`` to ``path``."""
    out = Path(path)
    if out.parent and not out.parent.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(scrub(report_html(answer, media)), encoding="utf-8")
    log.info("wrote report %s", out)
