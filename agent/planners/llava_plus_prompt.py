"""The LLaVA-Plus prompt (``planner.format: llava_plus``), as its serving code builds it.

LLaVA-Plus's gradio server (``llava/serve/gradio_web_server_llava_plus.py``) talks to the model in
the LLaVA v1 conversation (``conv_llava_v1``: its system prompt, ``USER:`` / ``ASSISTANT:`` turns;
the processor's chat template renders them). After a tool call it adds one user turn::

    {api_name} model outputs: {tool_response}

    Please summarize the model outputs and answer my first question: {first question}

where ``tool_response`` is the Python ``repr`` of the tool worker's output dict after the server's
clean-up: ``boxes`` normalized xyxy and ``logits`` / ``scores`` rounded to 2 decimals, ``phrases``
the labels, ``masks_rle`` / ``size`` dropped, ``retrieval_results`` as ``[{caption, similarity}]``,
an empty dict as ``{'message': 'The {api_name} has processed the image.'}``. visagent adds ``ids``
(the region ids of the result, in order) so that the answer can cite them.
``grounding_dino+sam`` (a detection and its segmentation) is one round: one outputs turn with the
detection's boxes, logits and phrases and the ids of both. Errors are fed back in the same shape
(``{'message': ...}``). Templates: ``prompts/llava_plus_*.j2``.
"""

from __future__ import annotations

from typing import Any

from visagent.planners.base import PlannerState
from visagent.planners.prompting import Message, render, shown_images
from visagent.types import ErrorStep, PlannerStep, ToolStep

#: visagent tool -> the LLaVA-Plus API name its results are reported under (when the model's
#: own call named none, e.g. a planner step written by another planner)
_API_OF_TOOL = {"detect": "grounding_dino", "segment": "sam", "caption": "blip2", "ocr": "easyocr", "search": "clip"}


def _r(v: Any) -> float:
    return round(float(v), 2)


def worker_outputs(step: ToolStep) -> dict[str, Any]:
    """A tool step's output in the shape LLaVA-Plus's tool workers return it (after the server's clean-up)."""
    out = step.output
    w, h = max(1, int(out.get("width") or 1)), max(1, int(out.get("height") or 1))

    def norm(box: list[float]) -> list[float]:
        return [_r(box[0] / w), _r(box[1] / h), _r(box[2] / w), _r(box[3] / h)]

    if step.tool == "detect":
        dets = out.get("detections", [])
        return {"boxes": [norm(d["box"]) for d in dets], "logits": [_r(d.get("score", 0)) for d in dets],
                "phrases": [d.get("label", "") for d in dets], "ids": [d["id"] for d in dets]}  # fmt: skip
    if step.tool == "segment":
        masks = out.get("masks", [])
        res: dict[str, Any] = {"boxes": [norm(m["box"]) for m in masks], "ids": [m["id"] for m in masks]}
        if any(m.get("score") is not None for m in masks):
            res["scores"] = [_r(m.get("score") or 0) for m in masks]
        return res
    if step.tool == "caption":
        return {"caption": out.get("caption", "")}
    if step.tool == "ocr":  # the server drops easyocr's boxes and scores
        lines = out.get("lines", [])
        return {"texts": [ln.get("text", "") for ln in lines], "ids": [ln["id"] for ln in lines if "id" in ln]}
    if step.tool == "search":
        hits = out.get("results", [])
        results = [{"caption": h.get("image") or h.get("path") or "", "similarity": _r(h.get("score", 0))} for h in hits]
        return {"retrieval_results": results}
    return {"message": step.observation}


def _api_name(planner: PlannerStep | None, tool: str) -> str:
    from visagent.planners.llava_plus import api_name_of

    name = api_name_of(planner.raw) if planner is not None and planner.raw else ""
    return name or _API_OF_TOOL.get(tool, tool)


def _action_text(step: PlannerStep) -> str:
    """What the model said at ``step``: its own text, else the decision in LLaVA-Plus form."""
    if step.raw.strip().startswith(("\"thoughts", "thoughts", "\u201cthoughts")):
        return step.raw.strip()
    act = step.action
    if getattr(act, "kind", "") == "final":
        return f'"thoughts\U0001f914" {act.thought}\n"actions\U0001f680" []\n"value\U0001f449" {act.answer}'
    api = _API_OF_TOOL.get(act.tool, act.tool)
    call = repr([{"API_name": api, "API_params": act.args}])
    return (f'"thoughts\U0001f914" {act.thought}\n"actions\U0001f680" {call}\n'
            f'"value\U0001f449" I will use {api} to help to answer the question. Please wait for a moment.')  # fmt: skip


def build_llava_plus_messages(state: PlannerState, max_images: int = 4) -> list[Message]:
    """The chat messages of ``state`` in LLaVA-Plus's conversation (see module docstring)."""
    question = state.question.replace("<image>", "").strip()
    shown = shown_images(state, max_images)
    messages: list[Message] = [
        {"role": "system", "content": [{"type": "text", "text": render("llava_plus_system.j2")}]},
        {"role": "user", "content": [*({"type": "image", "id": i} for i in shown), {"type": "text", "text": question}]},
    ]
    last_planner: PlannerStep | None = None
    round_planner: PlannerStep | None = None
    pending: list[ToolStep] = []

    def flush() -> None:
        if not pending:
            return
        merged: dict[str, Any] = {}
        for t in pending:
            for k, v in worker_outputs(t).items():
                if k == "ids" and "ids" in merged:
                    merged["ids"] = merged["ids"] + v
                else:
                    merged.setdefault(k, v)
        api = _api_name(round_planner, pending[0].tool)
        text = render("llava_plus_outputs.j2", api_name=api, outputs=repr(merged), question=question)
        messages.append({"role": "user", "content": [{"type": "text", "text": text}]})
        pending.clear()

    for step in state.steps:
        if isinstance(step, PlannerStep):
            if step.raw == "" and pending:  # a follow-up (grounding_dino+sam's segmentation): same round
                last_planner = step
                continue
            flush()
            messages.append({"role": "assistant", "content": [{"type": "text", "text": _action_text(step)}]})
            last_planner = round_planner = step
        elif isinstance(step, ToolStep):
            pending.append(step)
        elif isinstance(step, ErrorStep):
            flush()
            raw = str((step.args or {}).get("raw", "")) if step.source == "planner" else ""
            if raw.strip():  # text that was no valid call: the model sees what it wrote, then why
                messages.append({"role": "assistant", "content": [{"type": "text", "text": raw.strip()}]})
            api = _api_name(last_planner, step.tool) if step.tool else "visagent"
            text = render("llava_plus_error.j2", api_name=api, message=repr(step.message), question=question)
            if messages[-1]["role"] == "user":  # roles alternate: join the user turn before
                part = messages[-1]["content"][-1]
                messages[-1]["content"][-1] = {"type": "text", "text": part["text"] + "\n\n" + text}
            else:
                messages.append({"role": "user", "content": [{"type": "text", "text": text}]})
    flush()
    return messages
