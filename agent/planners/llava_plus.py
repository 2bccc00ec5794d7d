"""The LLaVA-Plus action format, mapped onto visagent's tools.

LLaVA-Plus checkpoints write::

    "thoughts🤔" To find the dog I will use grounding_dino.
    "actions🚀" [{"API_name": "grounding_dino", "API_params": {"image": "<imgpath>", "caption": "dog"}}]
    "value👉" I will use grounding_dino to help to answer the question. Please wait for a moment.

Quirks tolerated: the markers with or without their quotes (straight or curly) or emoji, the
action list as JSON or as a Python literal (single quotes, ``True``/``None``), a trailing comma,
a single action object instead of a list, a ``"value"`` key inside the action list (not a section
marker), and text around the sections. An empty action list is a final answer (the ``value`` text;
evidence: ids cited in it). Only the first action of a list is taken (one tool per turn).

Mapping (LLaVA-Plus API, as its tool workers register them -> visagent tool and arguments;
``image`` is the first image unless the params name a media id):

=======================================  ================================================================
grounding_dino                           ``detect(image, labels=<caption split on "." / ",">)``
grounding_dino+sam / grounded_sam        ``detect`` as above, then (``followup``) ``segment(image,
                                         boxes=<the detection ids>)``: detections and masks both citable
sam                                      ``segment(image, boxes=<normalized xyxy -> pixels>)`` or
                                         ``segment(image, points=..., point_labels=...)``; points as
                                         ``(batch, n, 2)`` with ``(batch, n)`` labels, ``(n, 2)``, or one
                                         ``[x, y]``; labels default to 1 (foreground)
blip2+grounding_dino / blip2             ``caption(image)``
easyocr                                  ``ocr(image)``
clip / clip-retrieval                    ``search(query=<query or caption>)``
=======================================  ================================================================

Any other API name (or one whose tool is not on offer) is a ``PlannerOutputError`` naming the
available API names, which the model sees. Normalized coordinates need the image size:
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


def _is_marker(text: str, m: re.Match[str]) -> bool:
    # the marker word must be followed by its emoji or by a closing quote / colon to count
    g = m.group(0)
    tail = text[m.end() : m.end() + 1]
    return any(e in g for e in ("\U0001f914", "\U0001f680", "\U0001f449")) or g[-1:] in "\"'\u201d\u2019" or tail == ":"


def _list_end(text: str, start: int) -> int:
    """The end of the bracketed literal opening at or after ``start`` (string-aware; -1 if none)."""
    i = start
    while i < len(text) and text[i] in " \t\r\n:":
        i += 1
    if i >= len(text) or text[i] not in "[{":
        return -1
    return _bracket_end(text, i, "[{", "]}")


def _bracket_end(text: str, start: int, opens: str, closes: str) -> int:
    """The index after the bracket closing the one at ``start``, quotes respected (-1 if none)."""
    depth, in_str, escaped = 0, None, False
    for j in range(start, len(text)):
        ch = text[j]
        if in_str:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == in_str:
                in_str = None
        elif ch in "\"'":
            in_str = ch
        elif ch in opens:
            depth += 1
        elif ch in closes:
            depth -= 1
            if depth == 0:
                return j + 1
    return -1


def split_sections(text: str) -> dict[str, str]:
    """``{"thoughts": str, "actions": str, "value": str}`` (missing sections are empty).

    Markers inside the action list (an ``API_params`` key named ``"value"``) are not sections."""
    found: list[tuple[int, int, str]] = []
    skip_until = -1
    for name in ("thoughts", "actions", "value"):
        for m in _MARK[name].finditer(text):
            if m.start() < skip_until or not _is_marker(text, m):
                continue
            found.append((m.start(), m.end(), name))
            if name == "actions":
                skip_until = _list_end(text, m.end())
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
    end = _bracket_end(text, start, opening, "]" if opening == "[" else "}")
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


def _flat(value: Any, what: str) -> list[Any]:
    """Nested lists (any depth, e.g. SAM's ``(batch, n, 2)`` points) -> their leaves in order."""
    if not isinstance(value, (list, tuple)):
        return [value]
    out: list[Any] = []
    for v in value:
        out.extend(_flat(v, what))
    return out


def _groups(value: Any, size: int, what: str) -> list[list[float]]:
    """``[x, y]``, ``[[x, y], ...]`` or ``[[[x, y], ...]]`` (batched) -> ``[[x, y], ...]`` floats."""
    vals = [float(v) for v in _flat(value, what)]
    if not vals or len(vals) % size:
        raise PlannerOutputError(f"llava_plus: {what} must hold {size} numbers each, got {len(vals)} numbers")
    return [vals[i : i + size] for i in range(0, len(vals), size)]


def _pixels(coords: list[float], size: tuple[int, int] | None, what: str) -> list[float]:
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


#: LLaVA-Plus API names (as its tool workers register them) -> the visagent tool each maps onto
API_TOOLS: dict[str, str] = {
    "grounding_dino": "detect",
    "grounding_dino+sam": "detect",
    "grounded_sam": "detect",
    "sam": "segment",
    "blip2+grounding_dino": "caption",
    "blip2": "caption",
    "easyocr": "ocr",
    "clip": "search",
    "clip-retrieval": "search",
}
_ALIASES = {"groundingdino": "grounding_dino", "grounded-sam": "grounded_sam", "blip": "blip2", "ocr": "easyocr",
            "clip_retrieval": "clip-retrieval", "retrieval": "clip"}
#: API names whose detections are segmented next (detection, then SAM on those boxes)
DETECT_THEN_SEGMENT = ("grounding_dino+sam", "grounded_sam")


def api_key(name: str) -> str:
    key = name.strip().lower()
    return _ALIASES.get(key, key)


def available_apis(tools: Any = None) -> list[str]:
    """The API names on offer: those whose visagent tool is in ``tools`` (all when None)."""
    return [api for api, tool in API_TOOLS.items() if tools is None or tool in tools]


def map_action(
    api: Mapping[str, Any], sizes: Mapping[str, tuple[int, int]] | None, image: str, thought: str, tools: Any = None
) -> Action:
    """One LLaVA-Plus ``{"API_name", "API_params"}`` -> a visagent ``Action``.

    ``tools``: names of the tools on offer; an API name outside them (or unknown) is an error
    naming the available API names (the model sees it and can retry)."""
    name = str(api.get("API_name", api.get("api_name", ""))).strip()
    params = api.get("API_params", api.get("api_params", {})) or {}
    if not name:
        raise PlannerOutputError("llava_plus: an action has no API_name")
    if not isinstance(params, Mapping):
        raise PlannerOutputError(f"llava_plus: API_params of {name} must be an object")
    key = api_key(name)
    if key not in API_TOOLS or (tools is not None and API_TOOLS[key] not in tools):
        names = ", ".join(f'"{a}"' for a in available_apis(tools)) or "none"
        raise PlannerOutputError(f'llava_plus: unknown API_name "{name}"; available API_name values: {names}')
    img = params.get("image")
    img = str(img) if isinstance(img, str) and _MEDIA_RE.match(img) else image
    size = (sizes or {}).get(img)
    tool = API_TOOLS[key]
    if tool == "detect":
        caption = params.get("caption", params.get("text", params.get("prompt", "")))
        labels = _labels(caption)
        if not labels or not labels[0]:
            raise PlannerOutputError(f"llava_plus: {name} needs a caption naming the objects")
        return Action(tool="detect", args={"image": img, "labels": labels}, thought=thought)
    if tool == "segment":
        args: dict[str, Any] = {"image": img}
        if params.get("boxes"):
            args["boxes"] = [_pixels(b, size, "boxes") for b in _groups(params["boxes"], 4, "boxes")]
        if params.get("points"):
            pts = _groups(params["points"], 2, "points")
            args["points"] = [_pixels(p, size, "points") for p in pts]
            labels = params.get("point_labels")
            point_labels = [int(float(v)) for v in _flat(labels, "point_labels")] if labels is not None else [1] * len(pts)
            if len(point_labels) != len(pts):
                raise PlannerOutputError(f"llava_plus: {len(pts)} points but {len(point_labels)} point_labels")
            args["point_labels"] = point_labels
        if "boxes" not in args and "points" not in args:
            raise PlannerOutputError("llava_plus: sam needs boxes or points")
        return Action(tool="segment", args=args, thought=thought)
    if tool == "caption":
        return Action(tool="caption", args={"image": img}, thought=thought)
    if tool == "ocr":
        return Action(tool="ocr", args={"image": img}, thought=thought)
    query = params.get("query", params.get("caption", params.get("text", "")))
    if not str(query).strip():
        raise PlannerOutputError(f"llava_plus: {name} needs a query (the text to search the images for)")
    return Action(tool="search", args={"query": str(query)}, thought=thought)


def parse_llava_plus(
    text: str, sizes: Mapping[str, tuple[int, int]] | None = None, image: str = "img_0", tools: Any = None
) -> Action | Final:
    """Parse LLaVA-Plus output into an Action (first API call) or a Final (empty action list).

    ``tools``: names of the visagent tools on offer (API names mapping elsewhere are refused)."""
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
    calls = [a for a in actions if isinstance(a, Mapping) and ("API_name" in a or "api_name" in a)]
    if not calls:
        values = [str(a["value"]) for a in actions if isinstance(a, Mapping) and isinstance(a.get("value"), str)]
        value = (values[0] if values else sections["value"]).strip().strip("\"'")
        if values or all(isinstance(a, Mapping) and not a for a in actions):
            if not value:
                raise PlannerOutputError("llava_plus: an empty action list needs a value👉 answer", raw=text)
            return Final(answer=value, evidence=list(dict.fromkeys(ids.citable_in_text_re().findall(value))), thought=thought)
        raise PlannerOutputError("llava_plus: each action must be an object {API_name, API_params}", raw=text)
    first = calls[0]
    try:
        return map_action(first, sizes, image, thought, tools)
    except PlannerOutputError as exc:
        exc.raw = text
        raise
    except (TypeError, ValueError, KeyError, IndexError, OverflowError) as exc:
        raise PlannerOutputError(f"llava_plus: bad API_params: {type(exc).__name__}: {str(exc)[:200]}", raw=text) from None


@register_format("llava_plus")
def _parse(text: str) -> Action | Final:
    return parse_llava_plus(text, sizes=_SIZES.get())


def api_name_of(raw: str) -> str:
    """The (normalized) API name of the first action in LLaVA-Plus text; "" when there is none."""
    try:
        actions = _literal(split_sections(raw)["actions"])
    except PlannerOutputError:
        return ""
    if isinstance(actions, Mapping):
        actions = [actions]
    for a in actions if isinstance(actions, list) else []:
        if isinstance(a, Mapping) and ("API_name" in a or "api_name" in a):
            return api_key(str(a.get("API_name", a.get("api_name", ""))))
    return ""


def followup(steps: list[Any], tools: Any = None) -> Action | None:
    """The second half of a combined API: after ``grounding_dino+sam`` / ``grounded_sam`` ran its
    detection (the last step), SAM segments those detections (``segment(image, boxes=<det ids>)``),
    so the detections and the masks are both citable. None when nothing follows."""
    from visagent.types import PlannerStep, ToolStep

    if len(steps) < 2 or (tools is not None and "segment" not in tools):
        return None
    last, before = steps[-1], steps[-2]
    if not (isinstance(last, ToolStep) and last.tool == "detect" and isinstance(before, PlannerStep)):
        return None
    if api_name_of(before.raw) not in DETECT_THEN_SEGMENT:
        return None
    dets = [d for d in last.output.get("detections", []) if isinstance(d, Mapping) and d.get("id")]
    if not dets:
        return None
    image = str(last.output.get("image") or last.args.get("image", "img_0"))
    return Action(tool="segment", args={"image": image, "boxes": [str(d["id"]) for d in dets]},
                  thought=f"segment the {len(dets)} detection{'s' if len(dets) != 1 else ''} of {last.tool} (call {last.call}) with sam")
