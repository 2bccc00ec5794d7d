"""Planner prompts: rendering the templates in ``prompts/`` and fitting them into the context.

``build_messages(state, ...)`` returns chat messages in a neutral format that each planner backend
converts (LLaVA chat template, OpenAI, LangChain)::

    [{"role": "system" | "user" | "assistant",
      "content": [{"type": "text", "text": str} | {"type": "image", "id": "img_0"}]}]

Order: the system prompt (tool specs rendered from each tool's Input JSON schema, the action
format, worked examples), one user message with the images and the question (and earlier turns of
a conversation), then per step: the planner's action as compact JSON (assistant) and the
observation ``obs_N (tool): text`` or ``error: text`` (user). Consecutive messages of one role are
merged (some chat templates require alternating roles). With ``PromptOptions.tool_messages`` (chat
APIs with native tool calls), an assistant message's tool calls are sent back as they came
(``{"role": "assistant", "content": [...], "tool_calls": [{"id", "name", "arguments"}]}``) and
each result as ``{"role": "tool", "tool_call_id": id, "content": [...]}``, one per call id.

Context budget (``fit_messages``): when the prompt is longer than the budget, older observations
are shortened step by step — level 1 clips observations older than the last ``keep_recent`` tool
calls to ``clip_chars``; level 2 replaces them by their ids only; level 3 also drops the worked
examples; level 4 reduces every observation (recent ones too) to its ids and earlier conversation
turns to their answers; level 5 also shows each tool by its signature and description only (the
per-argument lines go: many tools on a 4k-context model). The question and the images are never cut. Templates are Jinja with
``StrictUndefined`` (a missing variable is an error, never an empty string).
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from visagent import ids
from visagent.errors import RunError, UsageError
from visagent.planners.base import PlannerState
from visagent.types import Action, ErrorStep, Final, NoteStep, PlannerStep, ToolStep

Message = dict[str, Any]

#: observations and earlier turns reduced to their ids from this level on
IDS_ONLY_LEVEL = 4
#: from this level on each tool is shown by its signature and description only (no argument lines)
COMPACT_TOOLS_LEVEL = 5
MAX_LEVEL = COMPACT_TOOLS_LEVEL


def prompts_dir() -> Path:
    """``$VISAGENT_PROMPTS_DIR``, else the templates shipped as package data (``visagent.prompts``)."""
    env = os.environ.get("VISAGENT_PROMPTS_DIR")
    if env:
        folder = Path(env)
    else:
        from importlib.resources import files

        folder = Path(str(files("visagent.prompts")))
    if not (folder / "system.j2").is_file():
        raise UsageError(f"planner prompt templates not found in {folder} (set VISAGENT_PROMPTS_DIR)")
    return folder


@functools.lru_cache(maxsize=8)
def _environment(folder: str) -> Any:
    import jinja2

    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(folder),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=False,
        autoescape=False,
    )


def render(name: str, **variables: Any) -> str:
    """Render ``prompts/<name>`` with ``variables`` (StrictUndefined)."""
    import jinja2

    env = _environment(str(prompts_dir()))
    try:
        return env.get_template(name).render(**variables).strip()
    except jinja2.UndefinedError as exc:
        raise UsageError(f"prompt template {name}: {exc}") from None


def _strip(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _strip(v) for k, v in node.items() if k != "title"}
    if isinstance(node, list):
        return [_strip(v) for v in node]
    return node


def _constraints(prop: dict[str, Any]) -> str:
    parts = []
    for key, word in (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="), ("exclusiveMaximum", "<")):
        if key in prop:
            parts.append(f"{word} {prop[key]:g}" if isinstance(prop[key], (int, float)) else f"{word} {prop[key]}")
    for key, word in (("minLength", "min length"), ("maxLength", "max length"), ("minItems", "min items"), ("maxItems", "max items")):
        if key in prop:
            parts.append(f"{word} {prop[key]}")
    if "enum" in prop:
        parts.append("one of " + ", ".join(json.dumps(v) for v in prop["enum"]))
    return ", ".join(parts)


def tool_specs(tools: dict[str, Any], details: bool = True) -> list[dict[str, Any]]:
    """``[{name, signature, description, args: [{name, text}], schema}]`` from each tool's Input
    JSON schema: ``signature`` from ``Tool.signature()``, one line per argument with its
    description and bounds (none when not ``details``), ``schema`` the compact JSON schema
    (titles removed)."""
    out = []
    for name, tool in tools.items():
        schema = tool.input_schema()
        args = []
        for pname, prop in schema.get("properties", {}).items():
            bits = [b for b in (prop.get("description", ""), _constraints(prop)) if b]
            for alt in prop.get("anyOf", []):
                extra = _constraints(alt)
                if extra:
                    bits.append(extra)
            if bits and details:
                args.append({"name": pname, "text": "; ".join(bits)})
        out.append(
            {
                "name": name,
                "signature": tool.signature(),
                "description": " ".join(tool.description.split()),
                "args": args,
                "schema": json.dumps(_strip(schema), separators=(",", ":")),
            }
        )
    return out


def action_json(decision: Action | Final) -> str:
    """The compact JSON form of a decision, as the prompts ask the planner to write it."""
    if isinstance(decision, Final):
        obj: dict[str, Any] = {"thought": decision.thought, "final": decision.answer, "evidence": decision.evidence}
    else:
        obj = {"thought": decision.thought, "tool": decision.tool, "args": decision.args}
    return json.dumps(obj, ensure_ascii=False)


@dataclass
class PromptOptions:
    """``max_images``: images shown to the planner (the first ones, then the newest frames)."""

    examples: bool = True
    max_images: int = 4
    keep_recent: int = 2
    clip_chars: int = 120
    #: native tool messages: a planner step whose ``raw`` records a tool call (``native_call_raw``)
    #: becomes an assistant message with ``tool_calls``, and its result a ``tool`` message
    tool_messages: bool = False


def shown_images(state: PlannerState, max_images: int) -> list[str]:
    """Ids of the images the planner sees: the question's images first, then the newest ones."""
    ids = [m.id for m in state.media if m.kind == "image"]
    if len(ids) <= max_images:
        return ids
    originals = [m.id for m in state.media if m.kind == "image" and m.parent is None]
    keep = originals[: max(1, max_images // 2)]
    rest = [i for i in ids if i not in keep]
    return keep + rest[len(rest) - (max_images - len(keep)) :]


def _history(state: PlannerState, level: int) -> list[dict[str, Any]]:
    turns = []
    for turn in state.history:
        evidence = turn.get("evidence", [])
        turns.append(
            {
                "question": str(turn.get("question", "")),
                "answer": str(turn.get("answer", "")),
                "evidence": [str(e) for e in evidence] if level < IDS_ONLY_LEVEL else [],
            }
        )
    return turns


def _observation(step: ToolStep, level: int, recent: bool, options: PromptOptions) -> str:
    text = step.observation
    if level >= 2 and (not recent or level >= IDS_ONLY_LEVEL):
        kept = list(dict.fromkeys(ids.region_in_text_re().findall(text)))
        text = "[shortened to fit the context]" + (f" ids: {', '.join(kept)}" if kept else "")
    elif level >= 1 and not recent and len(text) > options.clip_chars:
        text = text[: options.clip_chars].rstrip() + " …"
    return render("observation.j2", kind="tool", call=step.call, tool=step.tool, text=text)


def build_messages(state: PlannerState, options: PromptOptions | None = None, level: int = 0) -> list[Message]:
    """The chat messages for ``state`` at truncation ``level`` (0 = nothing cut)."""
    options = options or PromptOptions()
    shown = shown_images(state, options.max_images)
    examples = render("examples.j2") if options.examples and level < 3 else ""
    system = render(
        "system.j2",
        tools=tool_specs(state.tools, details=level < COMPACT_TOOLS_LEVEL),
        examples=examples,
        media_ids=[m.id for m in state.media],
    )
    media = [
        {
            "id": m.id,
            "kind": m.kind,
            "width": m.width,
            "height": m.height,
            "timestamp": m.timestamp,
            "parent": m.parent,
            "shown": m.id in shown,
        }
        for m in state.media
    ]
    notes = [s.message for s in state.steps if isinstance(s, NoteStep)]
    user = render("user.j2", history=_history(state, level), media=media, notes=notes, question=state.question)
    messages: list[Message] = [
        {"role": "system", "content": [{"type": "text", "text": system}]},
        {"role": "user", "content": [*({"type": "image", "id": i} for i in shown), {"type": "text", "text": user}]},
    ]
    tool_steps = [s for s in state.steps if isinstance(s, ToolStep)]
    recent_calls = {s.call for s in tool_steps[-options.keep_recent :]} if options.keep_recent else set()
    pending: list[str] = []  # ids of native tool calls announced and not answered yet
    current: str | None = None  # the call whose result comes next
    for step in state.steps:
        # a native tool call: its planner step, or the error of a call whose arguments were unusable
        raw = step.raw if isinstance(step, PlannerStep) else (step.args or {}).get("raw") if isinstance(step, ErrorStep) else None
        call = _native_call(raw) if options.tool_messages and isinstance(raw, str) else None
        if isinstance(step, ErrorStep) and step.source != "planner":
            call = None
        if call is not None:
            if call["id"] not in pending:
                _flush(messages, pending)
                announced = call.get("all") or [call]
                text_part = {"type": "text", "text": call.get("content", "")}
                messages.append({"role": "assistant", "content": [text_part], "tool_calls": announced})
                pending.extend(c["id"] for c in announced)
            pending.remove(call["id"])
            current = call["id"]
        if isinstance(step, PlannerStep):
            if call is None:
                _flush(messages, pending)
                current = None
                _append(messages, "assistant", action_json(step.action))
            continue
        if isinstance(step, ToolStep):
            text = _observation(step, level, step.call in recent_calls, options)
        elif isinstance(step, ErrorStep):
            text = step.message
            if level >= 2 and len(text) > options.clip_chars:
                text = text[: options.clip_chars].rstrip() + " …"
            text = render("observation.j2", kind="error", call=0, tool=step.tool or "", text=text)
        else:
            continue
        if current is not None:
            messages.append({"role": "tool", "tool_call_id": current, "content": [{"type": "text", "text": text}]})
            current = None
        else:
            _append(messages, "user", text)
    _flush(messages, pending)
    return messages


def native_call_raw(content: str, calls: list[dict[str, Any]], index: int) -> str:
    """The ``raw`` of a planner step that is call ``index`` of an assistant message's native tool
    calls (``calls``: ``[{id, name, arguments}]``, arguments as JSON text); the first step of the
    message records all of them and the message's text."""
    if index == 0:
        return json.dumps({"content": content, "tool_calls": calls, "tool_call_id": calls[0]["id"]}, ensure_ascii=False)
    return json.dumps({"tool_calls": [calls[index]], "tool_call_id": calls[index]["id"], "queued": True}, ensure_ascii=False)


def _native_call(raw: str) -> dict[str, Any] | None:
    """``{id, name, arguments, content, all}`` from a ``native_call_raw`` text, else None."""
    if not raw.startswith("{") or '"tool_call_id"' not in raw:
        return None
    try:
        obj = json.loads(raw)
        calls = [{"id": str(c["id"]), "name": str(c["name"]), "arguments": str(c["arguments"])} for c in obj["tool_calls"]]
        own = next(c for c in calls if c["id"] == obj["tool_call_id"])
    except (ValueError, KeyError, TypeError, StopIteration):
        return None
    return {**own, "content": str(obj.get("content") or ""), "all": None if obj.get("queued") else calls}


def _flush(messages: list[Message], pending: list[str]) -> None:
    """Answer announced calls that never ran (every tool call id needs a ``tool`` message)."""
    for call_id in pending:
        text = render("observation.j2", kind="error", call=0, tool="", text="this call was not run")
        messages.append({"role": "tool", "tool_call_id": call_id, "content": [{"type": "text", "text": text}]})
    pending.clear()


def _append(messages: list[Message], role: str, text: str) -> None:
    last = messages[-1]
    if last["role"] == role and role != "tool" and "tool_calls" not in last:
        parts = last["content"]
        if parts and parts[-1]["type"] == "text":
            parts[-1] = {"type": "text", "text": parts[-1]["text"] + "\n" + text}
        else:
            parts.append({"type": "text", "text": text})
    else:
        messages.append({"role": role, "content": [{"type": "text", "text": text}]})


def fit_messages(
    state: PlannerState,
    count_tokens: Callable[[list[Message]], int],
    budget: int,
    options: PromptOptions | None = None,
) -> tuple[list[Message], int, int]:
    """The least-truncated messages whose ``count_tokens`` fits ``budget``: (messages, level, tokens).

    ``RunError`` when even the last level does not fit (the question and images alone are too long).
    """
    tokens = 0
    for level in range(MAX_LEVEL + 1):
        messages = build_messages(state, options, level)
        tokens = count_tokens(messages)
        if tokens <= budget:
            return messages, level, tokens
    raise RunError(
        f"the planner prompt needs {tokens} tokens even with observations shortened, over the budget of "
        f"{budget} (the model's context minus max_new_tokens); use fewer images or a larger-context model"
    )


def text_only(messages: Sequence[Message]) -> str:
    """The messages as plain text (for snapshots and token estimates)."""
    lines = []
    for m in messages:
        body = "".join("<image>\n" if p["type"] == "image" else p["text"] for p in m["content"])
        lines.append(f"[{m['role']}]\n{body}")
    return "\n".join(lines)


# -- helpers for chat-API planners (OpenAI-compatible servers, LangChain) ---------------------------
FINAL_TOOL = "final_answer"


def image_data_url(image: Any, fmt: str = "JPEG", quality: int = 90) -> str:
    """A PIL image as a ``data:image/...;base64,...`` URL (JPEG by default, PNG with ``fmt``)."""
    import base64
    import io

    buf = io.BytesIO()
    if fmt.upper() == "JPEG":
        image.convert("RGB").save(buf, format="JPEG", quality=quality)
        mime = "image/jpeg"
    else:
        image.save(buf, format="PNG")
        mime = "image/png"
    return f"data:{mime};base64,{base64.b64encode(buf.getvalue()).decode('ascii')}"


def function_specs(tools: dict[str, Any]) -> list[dict[str, Any]]:
    """OpenAI function-tool specs for ``tools`` plus ``final_answer(answer, evidence)``."""
    specs = [
        {
            "type": "function",
            "function": {
                "name": name,
                "description": tool.description.strip(),
                "parameters": _strip(tool.input_schema()),
            },
        }
        for name, tool in tools.items()
    ]
    specs.append(
        {
            "type": "function",
            "function": {
                "name": FINAL_TOOL,
                "description": "Give the final answer, citing the ids of the evidence (region ids like det_1_0, or obs_N).",
                "parameters": {
                    "type": "object",
                    "properties": {
                        "answer": {"type": "string", "description": "the answer to the question"},
                        "evidence": {"type": "array", "items": {"type": "string"}, "description": "cited ids"},
                        "thought": {"type": "string", "description": "what the evidence shows"},
                    },
                    "required": ["answer", "evidence"],
                },
            },
        }
    )
    return specs


def decision_from_call(name: str, args: Any, thought: str = "", raw: str = "") -> Action | Final:
    """A native tool call (name + arguments dict or JSON text) -> Action / Final."""
    from visagent.errors import PlannerOutputError
    from visagent.safe import BoundsError, load_json

    if isinstance(args, str):  # within the same bounds as every planner text
        try:
            args = load_json(args, f"arguments of {name}") if args.strip() else {}
        except json.JSONDecodeError as exc:
            raise PlannerOutputError(f"arguments of {name} are not valid JSON ({exc.msg})", raw=raw) from None
        except BoundsError as exc:
            raise PlannerOutputError(str(exc), raw=raw[:2000]) from None
    if not isinstance(args, dict):
        raise PlannerOutputError(f"arguments of {name} must be a JSON object", raw=raw)
    if name == FINAL_TOOL:
        evidence = args.get("evidence", [])
        if isinstance(evidence, str):
            evidence = [evidence]
        if not isinstance(evidence, list):
            raise PlannerOutputError("final_answer: evidence must be a list of ids", raw=raw)
        return Final(answer=str(args.get("answer", "")), evidence=[str(e) for e in evidence], thought=str(args.get("thought", thought) or ""))
    return Action(tool=name, args=args, thought=thought)


def estimate_tokens(messages: Sequence[Message], image_tokens: int = 600) -> int:
    """A tokenizer-free estimate: ~4 characters per token plus ``image_tokens`` per image."""
    n = 0
    for m in messages:
        for p in m["content"]:
            n += image_tokens if p["type"] == "image" else len(p["text"]) // 4 + 1
        for c in m.get("tool_calls") or ():
            n += (len(c["name"]) + len(c["arguments"])) // 4 + 8
    return n
