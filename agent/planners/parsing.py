"""Parsing planner text into actions: ``parse_action(text, format="json")``.

JSON format (what the prompts ask for): one object, either
``{"thought": "...", "tool": "detect", "args": {...}}`` or
``{"thought": "...", "final": "the answer", "evidence": ["det_1_0"]}``. Code fences and text around
the object are tolerated; ``{"action": NAME, "action_input": {...}}`` is accepted too.

Tool calls written as text (``text_tool_calls``): what a chat server without a tool-call parser
returns in ``content`` — hermes blocks ``<tool_call>{"name": NAME, "arguments": {...}}</tool_call>``
(one or several), or bare ``{"name": NAME, "arguments": {...}}`` objects (``parameters`` accepted
for ``arguments``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from visagent.errors import PlannerOutputError
from visagent.safe import MAX_STARTS, MAX_TEXT_CHARS, BoundsError, check_shape, clean, find_json_object, load_json
from visagent.types import Action, Final

_FORMATS: dict[str, Callable[[str], Action | Final]] = {}


def register_format(name: str) -> Callable[[Callable[[str], Action | Final]], Callable[[str], Action | Final]]:
    def deco(fn: Callable[[str], Action | Final]) -> Callable[[str], Action | Final]:
        _FORMATS[name] = fn
        return fn

    return deco


def parse_action(text: str, format: str = "json") -> Action | Final:  # noqa: A002 - public name
    """Parse planner text into an ``Action`` or a ``Final``; ``PlannerOutputError`` if it cannot."""
    try:
        parser = _FORMATS[format]
    except KeyError:
        raise PlannerOutputError(f"unknown action format '{format}'; available: {', '.join(sorted(_FORMATS))}") from None
    return parser(text)


def extract_json_object(text: str) -> dict[str, Any]:
    """The first complete JSON object in ``text`` (code fences and surrounding prose ignored),
    within ``visagent.safe``'s bounds (linear time, bounded size and depth)."""
    try:
        value, last_error = find_json_object(text)
    except BoundsError as exc:
        raise PlannerOutputError(str(exc), raw=text[:2000]) from None
    if value is None:
        raise PlannerOutputError(f"planner output is not a JSON action: {last_error}", raw=text)
    return value


def decision_from_dict(obj: dict[str, Any], raw: str = "") -> Action | Final:
    """Map a decoded JSON object onto an Action or Final."""
    thought = str(obj.get("thought", "") or "")
    if "final" in obj or "answer" in obj and "tool" not in obj:
        answer = obj.get("final", obj.get("answer"))
        evidence = obj.get("evidence", [])
        if isinstance(evidence, str):
            evidence = [evidence]
        if not isinstance(answer, (str, int, float)) or not isinstance(evidence, list):
            raise PlannerOutputError("final answer must be text with an evidence list of ids", raw=raw)
        return Final(answer=str(answer), evidence=[str(e) for e in evidence], thought=thought)
    tool = obj.get("tool", obj.get("action"))
    args = obj.get("args", obj.get("action_input", obj.get("arguments", {})))
    if not isinstance(tool, str) or not tool:
        raise PlannerOutputError('action must name a tool: {"tool": NAME, "args": {...}} or give {"final": ...}', raw=raw)
    if isinstance(args, str):
        try:
            args = load_json(args, f"arguments of {tool}")
        except ValueError as exc:  # BoundsError or JSONDecodeError
            detail = str(exc) if isinstance(exc, BoundsError) else f"arguments of {tool} must be a JSON object"
            raise PlannerOutputError(detail, raw=raw) from None
    if not isinstance(args, dict):
        raise PlannerOutputError(f"arguments of {tool} must be a JSON object", raw=raw)
    return Action(tool=tool, args=args, thought=thought)


@register_format("json")
def _parse_json(text: str) -> Action | Final:
    return decision_from_dict(extract_json_object(text), raw=text)


def text_tool_calls(text: str) -> list[tuple[str, Any]]:
    """The tool calls written in ``text`` as ``[(name, arguments)]``, in order (arguments: a dict or
    JSON text); ``[]`` when there are none. ``<tool_call>`` blocks win over bare objects."""
    if len(text) > MAX_TEXT_CHARS:
        raise PlannerOutputError(f"planner output is longer than {MAX_TEXT_CHARS} characters", raw=text[:2000])
    tagged = "<tool_call>" in text
    starts: list[int] = []
    if tagged:
        pos = text.find("<tool_call>")
        while pos != -1 and len(starts) < MAX_STARTS:
            brace = text.find("{", pos)
            if brace == -1:
                break
            starts.append(brace)
            pos = text.find("<tool_call>", brace)
    decoder = json.JSONDecoder(strict=False)
    calls: list[tuple[str, Any]] = []
    pos, tries = (starts.pop(0) if starts else -1) if tagged else text.find("{"), 0
    while pos != -1 and tries < MAX_STARTS:
        tries += 1
        nxt = pos + 1
        try:
            obj, end = decoder.raw_decode(text, pos)
        except RecursionError:
            raise PlannerOutputError("planner output is nested too deeply", raw=text[:2000]) from None
        except ValueError as exc:  # JSONDecodeError, or an integer past Python's digit limit
            if tagged:
                detail = str(exc).splitlines()[0]
                raise PlannerOutputError(f"a <tool_call> block is not valid JSON ({detail})", raw=text) from None
        else:
            nxt = end
            if isinstance(obj, dict):
                try:
                    check_shape(obj, "a tool call")
                except BoundsError as exc:
                    raise PlannerOutputError(str(exc), raw=text[:2000]) from None
                name = obj.get("name")
                args = obj.get("arguments", obj.get("parameters"))
                if isinstance(name, str) and name and ("arguments" in obj or "parameters" in obj):
                    calls.append((name, clean(args if args is not None else {})))
                elif tagged:
                    raise PlannerOutputError('a <tool_call> block must be {"name": NAME, "arguments": {...}}', raw=text)
        pos = (starts.pop(0) if starts else -1) if tagged else text.find("{", nxt)
    return calls
