"""LangChain adapters: visagent's tools, or the whole agent, as LangChain tools.

- ``make_tools(agent)``: one ``StructuredTool`` per visagent tool. ``args_schema`` is the tool's
  ``Input`` model; ``response_format="content_and_artifact"``: the ``ToolMessage`` content is the
  observation text, its ``artifact`` the typed ``Output`` (boxes, masks, scores as pydantic objects).
  Media arguments (fields whose name mentions image, video, media or frame) take a media id
  (``img_0``), a file path or ``sample:NAME``; a new path is registered and its id reported at the
  end of the content (``[media: photo.jpg = img_0]``). The tools of one ``make_tools`` call share a
  ``ToolSession``: its media and region ids (``det_1_0``) persist from call to call, so a later call
  can segment the boxes an earlier call detected.
- ``make_agent_tool(agent)``: one tool ``visual_question(question, media)`` that runs the whole
  visagent loop; content = the answer and its evidence, artifact = the ``Answer``.

Bad arguments come back as the tool message (status ``error``) so the chat model can retry; they
never raise out of the LangChain agent. Both adapters work inside ``langchain.agents.create_agent``.
Needs ``langchain-core`` (``pip install 'visagent[langchain]'`` for ``create_agent``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from visagent.errors import ToolError, UsageError
from visagent.session import CallSession

if TYPE_CHECKING:  # pragma: no cover
    from langchain_core.tools import StructuredTool

    from visagent.agent import Agent
    from visagent.tools.base import Tool, ToolOutput
    from visagent.types import Answer

log = logging.getLogger(__name__)



class ToolSession(CallSession):
    """The ``CallSession`` shared by the LangChain tools of one ``make_tools`` call: failures come
    back as ``ToolException`` (the chat model sees the message)."""

    def call(self, tool: "Tool", args: dict[str, Any]) -> tuple[str, "ToolOutput"]:
        from langchain_core.tools import ToolException

        try:
            return self.call_tool(tool.name, args)
        except (ToolError, UsageError) as exc:
            raise ToolException(str(exc)) from None


def _tool_description(tool: "Tool") -> str:
    return (
        f"{tool.description} Media arguments take a media id (img_0), a file path or sample:NAME; "
        "region ids from earlier calls (det_1_0) stay valid."
    )


def make_tools(
    agent: "Agent", names: Sequence[str] | None = None, media: Sequence[Any] = (), session: ToolSession | None = None
) -> list["StructuredTool"]:
    """One LangChain ``StructuredTool`` per visagent tool of ``agent`` (or only ``names``).

    ``media`` are registered up front (``img_0``, ... in order). The tools share one
    ``ToolSession`` (pass ``session`` to reuse one); it is also on each tool as
    ``tool.metadata["visagent_session"]``.
    """
    from langchain_core.tools import StructuredTool

    unknown = [n for n in names or () if n not in agent.tools]
    if unknown:
        raise UsageError(f"unknown tool(s): {', '.join(unknown)}; available: {', '.join(agent.tools)}")
    session = session or ToolSession(agent, media)
    chosen = [agent.tools[n] for n in names] if names else list(agent.tools.values())
    out = []
    for tool in chosen:

        # plain annotations: LangGraph resolves this function's type hints at runtime
        def run(_tool: Any = tool, **kwargs: Any) -> tuple[str, Any]:
            return session.call(_tool, kwargs)

        out.append(
            StructuredTool.from_function(
                func=run,
                name=tool.name,
                description=_tool_description(tool),
                args_schema=tool.Input,
                response_format="content_and_artifact",
                handle_tool_error=True,
                handle_validation_error=_validation_message,
                metadata={"visagent_session": session},
            )
        )
    return out


def _validation_message(exc: Any) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        parts = [f"{'.'.join(str(p) for p in e['loc']) or 'arguments'}: {e['msg']}" for e in errors()[:4]]
        return "bad arguments: " + "; ".join(parts)
    return f"bad arguments: {exc}"


class VisualQuestionInput(BaseModel):
    """Arguments of ``visual_question``."""

    model_config = ConfigDict(extra="forbid")
    question: str = Field(min_length=1, description="the question about the media, in plain language")
    media: list[str] = Field(
        min_length=1, description="image or video file paths (or sample:NAME), in order: img_0, img_1, ... / vid_0, ..."
    )


def format_answer(answer: "Answer") -> str:
    """The answer text plus one line per evidence item (id, tool, label, score, box)."""
    if not answer.ok:
        return f"no answer ({answer.status}): {answer.error}"
    lines = [answer.answer]
    if answer.evidence:
        lines.append("evidence:")
        lines += [f"- {ev.describe()}" for ev in answer.evidence]
    return "\n".join(lines)


def make_agent_tool(
    agent: "Agent", name: str = "visual_question", description: str | None = None, **ask_kwargs: Any
) -> "StructuredTool":
    """The whole visagent loop as one LangChain tool ``visual_question(question, media)``.

    Content: the answer and its evidence (``format_answer``); artifact: the ``Answer`` (with
    trace). ``ask_kwargs`` (e.g. ``max_steps``) are passed to ``agent.ask``. Async callers
    (``ainvoke``) run the loop in a worker thread.
    """
    from langchain_core.tools import StructuredTool, ToolException

    def run(question: str, media: list[str]) -> tuple[str, Any]:
        try:
            answer = agent.ask(question, media, **ask_kwargs)
        except UsageError as exc:
            raise ToolException(str(exc)) from None
        return format_answer(answer), answer

    async def arun(question: str, media: list[str]) -> tuple[str, Any]:
        import asyncio

        return await asyncio.to_thread(run, question, media)

    return StructuredTool.from_function(
        func=run,
        coroutine=arun,
        name=name,
        description=description
        or (
            "Answer a question about images or videos with visual tools (detection, segmentation, "
            "captioning, OCR, ...). Returns the answer with its evidence (region ids, boxes, scores)."
        ),
        args_schema=VisualQuestionInput,
        response_format="content_and_artifact",
        handle_tool_error=True,
        handle_validation_error=_validation_message,
    )
