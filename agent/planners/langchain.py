"""``--planner langchain``: any LangChain chat model (``BaseChatModel``) as the planner.

``Agent(config, planner=make_planner("langchain", config, chat_model=ChatOpenAI(...)))`` or, from
the configuration, ``planner.kind: langchain`` with ``planner.model: "provider:model"`` (built
with ``langchain.chat_models.init_chat_model``, e.g. ``ollama:llava`` or ``openai:gpt-4o``).

The visagent tools are bound with ``bind_tools`` (function specs from their Input schemas, plus
``final_answer(answer, evidence)``); a model whose ``bind_tools`` is not implemented gets the
JSON action format in the prompt instead and its text reply is parsed. Images go as
``image_url`` content parts with data URLs (the OpenAI-style block every multimodal LangChain chat
model accepts). Prompt budget as for the OpenAI planner (``context_tokens``, ``image_tokens``).
"""

from __future__ import annotations

import json
from typing import Any

from visagent.errors import PlannerOutputError, RunError, UsageError
from visagent.planners import prompting, register_planner
from visagent.planners.base import PlannerState
from visagent.planners.llava import parse_json_text
from visagent.types import PlannerReply


def to_langchain_messages(messages: list[prompting.Message], image: Any) -> list[Any]:
    """Neutral messages -> ``SystemMessage`` / ``HumanMessage`` / ``AIMessage``."""
    from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

    out: list[Any] = []
    for m in messages:
        text = "\n".join(p["text"] for p in m["content"] if p["type"] == "text")
        if m["role"] == "system":
            out.append(SystemMessage(content=text))
        elif m["role"] == "assistant":
            out.append(AIMessage(content=text))
        elif any(p["type"] == "image" for p in m["content"]):
            parts = [
                {"type": "image_url", "image_url": {"url": prompting.image_data_url(image(p["id"]))}}
                if p["type"] == "image"
                else {"type": "text", "text": p["text"]}
                for p in m["content"]
            ]
            out.append(HumanMessage(content=parts))
        else:
            out.append(HumanMessage(content=text))
    return out


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p if isinstance(p, str) else str(p.get("text", "")) for p in content if isinstance(p, (str, dict)))
    return str(content or "")




class LangChainPlanner:
    """Drives visagent with a LangChain ``BaseChatModel``."""

    name = "langchain"

    def __init__(self, config: Any, chat_model: Any) -> None:
        from langchain_core.language_models import BaseChatModel

        if not isinstance(chat_model, BaseChatModel):
            raise UsageError(f"planner 'langchain' needs a langchain_core BaseChatModel, got {type(chat_model).__name__}")
        opts = config.planner.chat()
        self.config = config
        self.chat_model = chat_model
        self.options = prompting.PromptOptions(examples=opts.examples, max_images=opts.max_images)
        self.context_tokens = opts.context_tokens
        self.image_tokens = opts.image_tokens
        self._bound: dict[tuple[str, ...], Any] = {}
        self.name = f"langchain:{type(chat_model).__name__}"

    def _model_for(self, tools: dict[str, Any]) -> tuple[Any, bool]:
        key = tuple(sorted(tools))
        if key not in self._bound:
            try:
                self._bound[key] = (self.chat_model.bind_tools(prompting.function_specs(tools)), True)
            except NotImplementedError:
                self._bound[key] = (self.chat_model, False)
        return self._bound[key]

    def next(self, state: PlannerState) -> PlannerReply:
        budget = self.context_tokens - self.config.planner.max_new_tokens
        messages, _, _ = prompting.fit_messages(state, lambda m: prompting.estimate_tokens(m, self.image_tokens), budget, self.options)
        model, _ = self._model_for(state.tools)
        try:
            reply = model.invoke(to_langchain_messages(messages, state.image))
        except (NotImplementedError, ValueError, TypeError) as exc:
            raise RunError(f"the LangChain chat model failed: {type(exc).__name__}: {exc}") from None
        usage = getattr(reply, "usage_metadata", None) or {}
        tokens = int(usage.get("output_tokens", 0) or 0)
        text = _text(reply.content)
        calls = getattr(reply, "tool_calls", None) or []
        if calls:
            raw = json.dumps({"content": text, "tool_calls": [{"name": c["name"], "args": c["args"]} for c in calls]}, default=str)
            return PlannerReply(decision=prompting.decision_from_call(calls[0]["name"], calls[0]["args"], thought=text, raw=raw), raw=raw, tokens=tokens)
        if not text.strip():
            raise PlannerOutputError("the chat model returned an empty message", raw=text)
        return PlannerReply(decision=parse_json_text(text), raw=text, tokens=tokens)


@register_planner("langchain")
def make_langchain_planner(config: Any, **kwargs: Any) -> LangChainPlanner:
    """``chat_model=``: a ``BaseChatModel``; else ``planner.model`` ("provider:model")."""
    chat_model = kwargs.get("chat_model")
    if chat_model is None:
        spec = config.planner.model
        if not spec:
            raise UsageError(
                "planner 'langchain' needs a chat model: pass chat_model= or set planner.model to 'provider:model'"
            )
        try:
            from langchain.chat_models import init_chat_model
        except ModuleNotFoundError:
            raise UsageError("planner.model needs the langchain package: pip install 'visagent[langchain]'") from None
        try:
            chat_model = init_chat_model(spec)
        except (ImportError, ValueError) as exc:
            raise UsageError(f"cannot build the LangChain chat model '{spec}': {exc}") from None
    return LangChainPlanner(config, chat_model)
