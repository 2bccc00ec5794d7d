"""``--planner openai``: any OpenAI-compatible chat endpoint (vLLM, Ollama, llama.cpp server,
LM Studio ...) serving LLaVA or another vision-language model.

Configuration (``config.planner``): ``base_url`` (or ``$OPENAI_BASE_URL``; e.g.
``http://127.0.0.1:8000/v1`` for ``vllm serve llava-hf/llava-1.5-7b-hf``, or
``http://127.0.0.1:11434/v1`` for Ollama), ``model`` (or ``$VISAGENT_OPENAI_MODEL``), the API key
from the environment variable named by ``api_key_env`` (default ``OPENAI_API_KEY``; local servers
accept any, ``EMPTY`` is sent when unset), ``max_new_tokens``, ``temperature``, ``top_p``,
``seed``, and the options of ``config.ChatOptions``: ``tool_calling`` (``auto`` | ``true`` | ``false``), ``timeout`` (s),
``context_tokens`` (32768: the prompt budget, estimated at 4 characters per token and
``image_tokens`` (600) per image), ``max_images`` (4).

Images are sent as ``data:image/jpeg;base64`` URLs in ``image_url`` content parts. With tool
calling (``auto``: tried first), every visagent tool is a function whose parameters are its
Input schema, plus ``final_answer(answer, evidence)``; the first tool call of the reply is the
decision. A server that rejects ``tools`` (HTTP 400) is asked again without them — once, then
for the rest of the planner's life — and its text reply is parsed as a JSON action.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

from visagent.errors import PlannerOutputError, RunError, UsageError
from visagent.planners import register_planner
from visagent.planners.base import PlannerState
from visagent.planners.llava import parse_json_text
from visagent.planners.prompting import (  # noqa: E501
    Message,
    PromptOptions,
    decision_from_call,
    estimate_tokens,
    fit_messages,
    function_specs,
    image_data_url,
)
from visagent.secrets import register
from visagent.types import PlannerReply

log = logging.getLogger(__name__)


def to_openai_messages(messages: list[Message], image: Any) -> list[dict[str, Any]]:
    """Neutral messages -> OpenAI chat messages (``image(id)`` gives the PIL image of an id)."""
    out: list[dict[str, Any]] = []
    for m in messages:
        if m["role"] == "user" and any(p["type"] == "image" for p in m["content"]):
            parts = [
                {"type": "image_url", "image_url": {"url": image_data_url(image(p["id"]))}}
                if p["type"] == "image"
                else {"type": "text", "text": p["text"]}
                for p in m["content"]
            ]
            out.append({"role": "user", "content": parts})
        else:
            out.append({"role": m["role"], "content": "\n".join(p["text"] for p in m["content"] if p["type"] == "text")})
    return out




class OpenAIPlanner:
    """A planner over an OpenAI-compatible ``/chat/completions`` endpoint."""

    name = "openai"

    def __init__(self, config: Any, client: Any = None) -> None:
        pc = config.planner
        opts = pc.chat()
        self.config = config
        self.model = pc.model or os.environ.get("VISAGENT_OPENAI_MODEL")
        if not self.model:
            raise UsageError("planner 'openai' needs a model: set planner.model in the config or VISAGENT_OPENAI_MODEL")
        self.tool_calling = "auto" if opts.tool_calling == "auto" else str(bool(opts.tool_calling)).lower()
        self._tools_rejected = False
        self.options = PromptOptions(examples=opts.examples, max_images=opts.max_images)
        self.context_tokens = opts.context_tokens
        self.image_tokens = opts.image_tokens
        if client is None:
            try:
                from openai import OpenAI
            except ModuleNotFoundError:
                raise UsageError("planner 'openai' needs the openai package: pip install 'visagent[openai]'") from None
            base_url = pc.base_url or os.environ.get("OPENAI_BASE_URL")
            client = OpenAI(
                base_url=base_url,
                api_key=_api_key(pc.api_key_env),
                timeout=opts.timeout,
                max_retries=opts.max_retries,
            )
        self.client = client
        self.name = f"openai:{self.model}"

    def next(self, state: PlannerState) -> PlannerReply:
        import openai

        pc = self.config.planner
        budget = self.context_tokens - pc.max_new_tokens
        messages, _, _ = fit_messages(state, lambda m: estimate_tokens(m, self.image_tokens), budget, self.options)
        request: dict[str, Any] = {
            "model": self.model,
            "messages": to_openai_messages(messages, state.image),
            "max_tokens": pc.max_new_tokens,
            "temperature": pc.temperature,
            "top_p": pc.top_p,
            "seed": int(pc.seed) + len(state.steps),
        }
        use_tools = self.tool_calling == "true" or (self.tool_calling == "auto" and not self._tools_rejected)
        if use_tools:
            request["tools"] = function_specs(state.tools)
        try:
            resp = self.client.chat.completions.create(**request)
        except openai.BadRequestError as exc:
            if not use_tools or self.tool_calling == "true":
                raise RunError(f"the planner endpoint rejected the request: {_short(exc)}") from None
            log.info("endpoint rejected tool calling (%s); using JSON actions in text", _short(exc))
            self._tools_rejected = True
            request.pop("tools")
            try:
                resp = self.client.chat.completions.create(**request)
            except openai.OpenAIError as exc2:
                raise RunError(f"the planner endpoint failed: {_short(exc2)}") from None
        except openai.OpenAIError as exc:
            raise RunError(f"the planner endpoint failed: {_short(exc)}") from None
        except ValueError as exc:  # a 200 that is not JSON (e.g. an HTML page)
            raise RunError(f"the planner endpoint did not answer with a chat completion ({_short(exc)}); check planner.base_url") from None
        choices = getattr(resp, "choices", None)
        if not isinstance(choices, list):
            raise RunError(f"the planner endpoint did not answer with a chat completion (got {type(resp).__name__}); check planner.base_url")
        if not choices:
            raise PlannerOutputError("the planner endpoint returned no choices")
        msg = getattr(choices[0], "message", None)
        if msg is None:
            raise PlannerOutputError("the planner endpoint returned a choice without a message")
        tokens = int(getattr(resp.usage, "completion_tokens", 0) or 0) if resp.usage else 0
        calls = msg.tool_calls or []
        if calls:
            raw = json.dumps(
                {
                    "content": msg.content or "",
                    "tool_calls": [{"name": c.function.name, "arguments": c.function.arguments} for c in calls],
                },
                ensure_ascii=False,
            )
            first = calls[0].function
            decision = decision_from_call(first.name, first.arguments, thought=msg.content or "", raw=raw)
            return PlannerReply(decision=decision, raw=raw, tokens=tokens)
        text = msg.content or ""
        if not text.strip():
            raise PlannerOutputError("the planner endpoint returned an empty message", raw=text)
        return PlannerReply(decision=parse_json_text(text), raw=text, tokens=tokens)


def _api_key(env: str) -> str:
    key = os.environ.get(env) or "EMPTY"
    register(key)  # never in a trace, log or error message
    return key


def _short(exc: Exception) -> str:
    return str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__


@register_planner("openai")
def make_openai_planner(config: Any, **kwargs: Any) -> OpenAIPlanner:
    """``client=``: an ``openai.OpenAI`` client to use instead of one built from the config."""
    return OpenAIPlanner(config, client=kwargs.get("client"))
