"""The LLaVA-Plus action format, mapped onto visagent's tools.

LLaVA-Plus checkpoints write::

    "thoughts🤔" To find the dog I will use grounding_dino.
    "actions🚀" [{"API_name": "grounding_dino", "API_params": {"image": "<imgpath>", "caption": "dog"}}]
    "value👉" I will use grounding_dino to help to answer the question. Please wait for a moment.

Quirks tolerated: the markers with or without their quotes (straight or curly) or emoji, the
action list as JSON or as a Python literal (single quotes, ``True``/``None``), a trailing comma,
a single action object instead of a list, and text around the sections. An empty action list is a
final answer (the ``value`` text; evidence: ids cited in it). Only the first action of a list is
taken (one tool per turn).

Mapping (LLaVA-Plus API -> visagent tool and arguments; ``image`` is the first image unless the
params name a media id):

=====================  ==========================================================================
grounding_dino         ``detect(image, labels=<caption split on "." / ",">)``
grounding_dino+sam     ``detect`` as above (segment the detections in a later step)
sam                    ``segment(image, boxes=<normalized xyxy -> pixels>)`` or
                       ``segment(image, points=<normalized -> pixels>, point_labels)``
blip2+grounding_dino   ``caption(image)``; ``blip2`` / ``blip`` too
easyocr / ocr          ``ocr(image)``
clip-retrieval         ``search(query=<query or caption>)``
=====================  ==========================================================================

Other API names become an action on a tool of that name, which the loop reports as an unknown
tool (an error observation the model sees). Normalized coordinates need the image size:
``parse_llava_plus(text, sizes={"img_0": (w, h)})``; ``parse_action(text, "llava_plus")`` uses the
sizes set with ``with image_sizes({...}):`` and rejects normalized boxes without them.
"""

from __future__ import annotations

import ast
import contextlib
import contextvars
import json
import re
from collections.abc import Iterator, Mapping
from typing import Any

from visagent import ids
from visagent.errors import PlannerOutputError
from visagent.planners.parsing import register_format
from visagent.safe import MAX_DEPTH, MAX_TEXT_CHARS, BoundsError, check_shape, clean
from visagent.types import Action, Final

_SIZES: contextvars.ContextVar[Mapping[str, tuple[int, int]] | None] = contextvars.ContextVar("llava_plus_sizes", default=None)

_Q = "[\"'\u201c\u201d\u2018\u2019]?"
_MARK = {
    "thoughts": re.compile(_Q + r"\s*thoughts?\s*(?:\U0001f914)?\s*" + _Q, re.I),
    "actions": re.compile(_Q + r"\s*actions?\s*(?:\U0001f680)?\s*" + _Q, re.I),
    "value": re.compile(_Q + r"\s*value\s*(?:\U0001f449)?\s*" + _Q, re.I),
}
_MEDIA_RE = re.compile(r"^(img|vid)_\d+$")


@contextlib.contextmanager
def image_sizes(sizes: Mapping[str, tuple[int, int]]) -> Iterator[None]:
    """Within the block, ``parse_action(text, "llava_plus")`` converts normalized coordinates
    with these ``{image id: (width, height)}``."""
    token = _SIZES.set(dict(sizes))
    try:
        yield
    finally:
        _SIZES.reset(token)


def split_sections(text: str) -> dict[str, str]:
    """``{"thoughts": str, "actions": str, "value": str}`` (missing sections are empty)."""
    found = []
    for name, pattern in _MARK.items():
        # the marker word must be followed by its emoji or by a closing quote / colon to count
        for m in pattern.finditer(text):
            tail = text[m.end() : m.end() + 1]
            if "\U0001f914" in m.group(0) or "\U0001f680" in m.group(0) or "\U0001f449" in m.group(0) or m.group(0)[-1:] in "\"'\u201d\u2019" or tail == ":":
                found.append((m.start(), m.end(), name))
                break
    found.sort()
    out = {"thoughts": "", "actions": "", "value": ""}
    for i, (_, end, name) in enumerate(found):
        stop = found[i + 1][0] if i + 1 < len(found) else len(text)
        out[name] = text[end:stop].strip().lstrip(":").strip()
    return out


def _literal(text: str) -> Any:
    text = text.strip()
    if not text:
        return []
    start = min((i for i in (text.find("["), text.find("{")) if i != -1), default=-1)
    if start == -1:
        raise PlannerOutputError(f"llava_plus: no action list after \"actions\": {text[:80]!r}", raw=text)
    opening = text[start]
    closing = "]" if opening == "[" else "}"
    depth, end = 0, -1
    in_str: str | None = None
    escaped = False
    for i in range(start, len(text)):
        ch = text[i]
        if in_str:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == in_str:
                in_str = None
        elif ch in "\"'":
            in_str = ch
        elif ch == opening:
            depth += 1
        elif ch == closing:
            depth -= 1
            if depth == 0:
                end = i + 1
                break
    chunk = text[start:end] if end != -1 else text[start:]
    chunk = re.sub(r",\s*([\]}])", r"\1", chunk)
    if len(chunk) > MAX_TEXT_CHARS:
        raise PlannerOutputError(f"llava_plus: the action list is longer than {MAX_TEXT_CHARS} characters", raw=text[:2000])
    for attempt in (json.loads, ast.literal_eval):
        try:
            value = attempt(chunk)
        except (ValueError, SyntaxError, json.JSONDecodeError):
            continue
        except (RecursionError, MemoryError):
            raise PlannerOutputError(f"llava_plus: the action list is nested deeper than {MAX_DEPTH} levels", raw=text[:2000]) from None
        try:
            check_shape(value, "llava_plus: the action list")
        except BoundsError as exc:
            raise PlannerOutputError(str(exc), raw=text[:2000]) from None
        return clean(value)
    raise PlannerOutputError(f"llava_plus: the action list is neither JSON nor a Python literal: {chunk[:80]!r}", raw=text)


def _pixels(coords: list[Any], size: tuple[int, int] | None, what: str) -> list[float]:
    vals = [float(v) for v in coords]
    if all(0.0 <= v <= 1.0 for v in vals):
        if size is None:
            raise PlannerOutputError(f"llava_plus: {what} are normalized; the image size is needed to convert them to pixels")
        w, h = size
        return [v * (w if i % 2 == 0 else h) for i, v in enumerate(vals)]
    return vals


def _labels(caption: Any) -> list[str]:
    if isinstance(caption, list):
        return [str(c).strip() for c in caption if str(c).strip()]
    parts = re.split(r"[.,;]", str(caption))
    return [p.strip() for p in parts if p.strip()] or [str(caption).strip()]


def map_action(api: Mapping[str, Any], sizes: Mapping[str, tuple[int, int]] | None, image: str, thought: str) -> Action:
    """One LLaVA-Plus ``{"API_name", "API_params"}`` -> a visagent ``Action``."""
    name = str(api.get("API_name", api.get("api_name", ""))).strip()
    params = api.get("API_params", api.get("api_params", {})) or {}
    if not name:
        raise PlannerOutputError("llava_plus: an action has no API_name")
    if not isinstance(params, Mapping):
        raise PlannerOutputError(f"llava_plus: API_params of {name} must be an object")
    img = params.get("image")
    img = str(img) if isinstance(img, str) and _MEDIA_RE.match(img) else image
    size = (sizes or {}).get(img)
    key = name.lower()
    if key in ("grounding_dino", "grounding_dino+sam", "groundingdino"):
        caption = params.get("caption", params.get("text", ""))
        return Action(tool="detect", args={"image": img, "labels": _labels(caption)}, thought=thought)
    if key == "sam":
        args: dict[str, Any] = {"image": img}
        if params.get("boxes"):
            boxes = params["boxes"]
            if boxes and not isinstance(boxes[0], (list, tuple)):
                boxes = [boxes]
            args["boxes"] = [_pixels(b, size, "boxes") for b in boxes]
        if params.get("points"):
            pts = params["points"]
            if pts and not isinstance(pts[0], (list, tuple)):
                pts = [pts]
            args["points"] = [_pixels(p, size, "points") for p in pts]
            labels = params.get("point_labels")
            if labels is not None:
                args["point_labels"] = [int(v) for v in (labels if isinstance(labels, list) else [labels])]
        return Action(tool="segment", args=args, thought=thought)
    if key in ("blip2+grounding_dino", "blip2", "blip"):
        return Action(tool="caption", args={"image": img}, thought=thought)
    if key in ("easyocr", "ocr"):
        return Action(tool="ocr", args={"image": img}, thought=thought)
    if key in ("clip-retrieval", "clip_retrieval"):
        query = params.get("query", params.get("caption", params.get("text", "")))
        return Action(tool="search", args={"query": str(query)}, thought=thought)
    clean = {k: v for k, v in params.items() if not (k == "image" and not _MEDIA_RE.match(str(v)))}
    return Action(tool=name, args=clean, thought=thought)


def parse_llava_plus(
    text: str, sizes: Mapping[str, tuple[int, int]] | None = None, image: str = "img_0"
) -> Action | Final:
    """Parse LLaVA-Plus output into an Action (first API call) or a Final (empty action list)."""
    if not isinstance(text, str) or not text.strip():
        raise PlannerOutputError("llava_plus: empty planner output", raw=str(text))
    sections = split_sections(text)
    if not any(sections.values()):
        raise PlannerOutputError('llava_plus: no "thoughts🤔" / "actions🚀" / "value👉" sections found', raw=text)
    thought = sections["thoughts"].strip().strip("\"'")
    try:
        actions = _literal(sections["actions"])
    except PlannerOutputError as exc:
        exc.raw = text
        raise
    if isinstance(actions, Mapping):
        actions = [actions]
    if not isinstance(actions, list):
        raise PlannerOutputError("llava_plus: actions must be a list of {API_name, API_params}", raw=text)
    if not actions:
        value = sections["value"].strip().strip("\"'")
        if not value:
            raise PlannerOutputError("llava_plus: an empty action list needs a value👉 answer", raw=text)
        return Final(answer=value, evidence=list(dict.fromkeys(ids.citable_in_text_re().findall(value))), thought=thought)
    first = actions[0]
    if not isinstance(first, Mapping):
        raise PlannerOutputError("llava_plus: each action must be an object {API_name, API_params}", raw=text)
    try:
        return map_action(first, sizes, image, thought)
    except PlannerOutputError as exc:
        exc.raw = text
        raise
    except (TypeError, ValueError, KeyError, IndexError, OverflowError) as exc:
        raise PlannerOutputError(f"llava_plus: bad API_params: {type(exc).__name__}: {str(exc)[:200]}", raw=text) from None


@register_format("llava_plus")
def _parse(text: str) -> Action | Final:
    return parse_llava_plus(text, sizes=_SIZES.get())
