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
Input schema, plus ``final_answer(answer, evidence)``. Every tool call of a reply runs, in order,
each as its own step (the calls after the first are returned on the following steps without a new
request); the next request carries the assistant message with all its calls and one ``tool``
message per call id. A server that rejects ``tools`` (HTTP 400) is asked again without them — once,
then for the rest of the planner's life — and its text reply is parsed: hermes
``<tool_call>{"name": ..., "arguments": ...}</tool_call>`` blocks or bare ``{"name", "arguments"}``
objects (vLLM without a tool parser) are tool calls, else it is a JSON action. A 400 refusing
``max_tokens`` is retried with ``max_completion_tokens`` (remembered). A reply cut off by the token
limit (``finish_reason: "length"``) ends the run naming the limit; connection and HTTP errors, and
answers that are not chat completions, end it naming the endpoint's URL (never the API key).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import os
import threading
from collections.abc import Callable
from typing import Any

from visagent.errors import PlannerOutputError, RunError, UsageError
from visagent.planners import register_planner
from visagent.planners.base import PlannerState
from visagent.planners.llava import parse_json_text
from visagent.planners.parsing import text_tool_calls
from visagent.planners.prompting import (  # noqa: E501
    Message,
    PromptOptions,
    decision_from_call,
    estimate_tokens,
    fit_messages,
    function_specs,
    image_data_url,
    native_call_raw,
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
        elif m["role"] == "tool":
            out.append({"role": "tool", "tool_call_id": m["tool_call_id"], "content": "\n".join(p["text"] for p in m["content"])})
        elif m.get("tool_calls"):
            calls = [
                {"id": c["id"], "type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}} for c in m["tool_calls"]
            ]
            text = "\n".join(p["text"] for p in m["content"] if p["type"] == "text")
            out.append({"role": "assistant", "content": text or None, "tool_calls": calls})
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
        self.where = _display_url(getattr(client, "base_url", None))
        self._token_param = "max_tokens"  # "max_completion_tokens" once the endpoint refuses max_tokens
        self._lock = threading.Lock()
        #: per run (``id(state.steps)``): the tool calls of the last message not returned yet
        self._queues: dict[int, tuple[list[Any], collections.deque[Callable[[], PlannerReply]]]] = {}
        self.name = f"openai:{self.model}"

    def next(self, state: PlannerState) -> PlannerReply:
        queued = self._take_queued(state)
        if queued is not None:
            return queued()
        pc = self.config.planner
        budget = self.context_tokens - pc.max_new_tokens
        use_tools = self.tool_calling == "true" or (self.tool_calling == "auto" and not self._tools_rejected)
        options = dataclasses.replace(self.options, tool_messages=use_tools)
        messages, _, _ = fit_messages(state, lambda m: estimate_tokens(m, self.image_tokens), budget, options)
        request: dict[str, Any] = {
            "model": self.model,
            "messages": to_openai_messages(messages, state.image),
            self._token_param: pc.max_new_tokens,
            "temperature": pc.temperature,
            "top_p": pc.top_p,
            "seed": int(pc.seed) + len(state.steps),
        }
        if use_tools:
            request["tools"] = function_specs(state.tools)
        resp = self._complete(request)
        where = f"the planner endpoint {self.where}"
        choices = getattr(resp, "choices", None)
        if choices is None and hasattr(resp, "model_dump"):
            raise RunError(f"{where} answered a chat completion without choices")
        if not isinstance(choices, list):
            raise RunError(f"{where} did not answer with a chat completion (got {type(resp).__name__}); check planner.base_url")
        if not choices:
            raise RunError(f"{where} answered a chat completion without choices")
        choice = choices[0]
        msg = getattr(choice, "message", None)
        if msg is None:
            raise RunError(f"{where} answered a choice without a message")
        if getattr(choice, "finish_reason", None) == "length":
            limit = request.get(self._token_param)
            raise RunError(
                f"the planner's reply was cut off at {self._token_param}={limit} (finish_reason 'length'); "
                f"raise planner.max_new_tokens (now {pc.max_new_tokens})"
            )
        usage = getattr(resp, "usage", None)
        tokens = int(getattr(usage, "completion_tokens", 0) or 0) if usage else 0
        content = msg.content if isinstance(getattr(msg, "content", None), str) else ""
        native = getattr(msg, "tool_calls", None) or []
        if native:
            calls = _native_calls(native)
            makers = [self._native_reply(content, calls, k, tokens) for k in range(len(calls))]
        else:
            if not content.strip():
                raise PlannerOutputError("the planner endpoint returned an empty message", raw=content)
            written = text_tool_calls(content)
            if not written:
                return PlannerReply(decision=parse_json_text(content), raw=content, tokens=tokens)
            makers = [self._text_reply(content, written, k, tokens) for k in range(len(written))]
        if len(makers) > 1:
            with self._lock:
                while len(self._queues) >= 32:  # runs that ended before their queue did
                    self._queues.pop(next(iter(self._queues)))
                self._queues[id(state.steps)] = (state.steps, collections.deque(makers[1:]))
        return makers[0]()

    def _take_queued(self, state: PlannerState) -> Callable[[], PlannerReply] | None:
        """The next call of the last message's tool calls, if this run has any left."""
        with self._lock:
            entry = self._queues.get(id(state.steps))
            if entry is None:
                return None
            steps, queue = entry
            if steps is not state.steps or not queue:
                del self._queues[id(state.steps)]
                return None
            maker = queue.popleft()
            if not queue:
                del self._queues[id(state.steps)]
            return maker

    @staticmethod
    def _native_reply(content: str, calls: list[dict[str, str]], k: int, tokens: int) -> Callable[[], PlannerReply]:
        def make() -> PlannerReply:
            raw = native_call_raw(content, calls, k)
            decision = decision_from_call(calls[k]["name"], calls[k]["arguments"], thought=content if k == 0 else "", raw=raw)
            return PlannerReply(decision=decision, raw=raw, tokens=tokens if k == 0 else 0)

        return make

    @staticmethod
    def _text_reply(content: str, calls: list[tuple[str, Any]], k: int, tokens: int) -> Callable[[], PlannerReply]:
        def make() -> PlannerReply:
            name, args = calls[k]
            raw = content if k == 0 else json.dumps({"name": name, "arguments": args}, ensure_ascii=False)
            decision = decision_from_call(name, args, raw=raw)
            return PlannerReply(decision=decision, raw=raw, tokens=tokens if k == 0 else 0)

        return make

    def _complete(self, request: dict[str, Any]) -> Any:
        """One chat completion; a 400 about ``max_tokens`` is retried with ``max_completion_tokens``
        and one about tools (``tool_calling: auto``) without tools, each remembered."""
        import openai

        where = f"the planner endpoint {self.where}"
        for _ in range(3):
            try:
                return self.client.chat.completions.create(**request)
            except openai.BadRequestError as exc:
                if "max_tokens" in request and _rejects_max_tokens(exc):
                    log.info("endpoint rejected max_tokens (%s); using max_completion_tokens", _short(exc))
                    self._token_param = "max_completion_tokens"
                    request["max_completion_tokens"] = request.pop("max_tokens")
                    continue
                if "tools" in request and self.tool_calling == "auto":
                    log.info("endpoint rejected tool calling (%s); using JSON actions in text", _short(exc))
                    self._tools_rejected = True
                    request.pop("tools")
                    continue
                raise RunError(f"{where} rejected the request: {_short(exc)}") from None
            except openai.APIStatusError as exc:
                raise RunError(f"{where} failed with HTTP {exc.status_code}: {_short(exc)}") from None
            except openai.OpenAIError as exc:
                raise RunError(f"{where} failed: {_short(exc)}") from None
            except ValueError as exc:  # a 200 that is not JSON (e.g. an HTML page)
                raise RunError(f"{where} did not answer with a chat completion ({_short(exc)}); check planner.base_url") from None
        raise RunError(f"{where} rejected the request after retries without max_tokens and tools")


def _native_calls(tool_calls: list[Any]) -> list[dict[str, str]]:
    """``[{id, name, arguments}]`` of a message's tool calls (arguments as JSON text; ids made up
    where a server gives none, or the same one twice)."""
    out: list[dict[str, str]] = []
    seen: set[str] = set()
    for k, c in enumerate(tool_calls):
        fn = getattr(c, "function", None)
        name = getattr(fn, "name", None) or ""
        args = getattr(fn, "arguments", None)
        if not isinstance(args, str):
            args = json.dumps(args if args is not None else {}, ensure_ascii=False, default=str)
        call_id = getattr(c, "id", None)
        if not isinstance(call_id, str) or not call_id or call_id in seen:
            call_id = f"call_{k}_{len(seen)}"
        seen.add(call_id)
        out.append({"id": call_id, "name": str(name), "arguments": args})
    return out


def _rejects_max_tokens(exc: Exception) -> bool:
    """A 400 saying ``max_tokens`` is not supported (OpenAI's newer models want ``max_completion_tokens``)."""
    if getattr(exc, "param", None) == "max_tokens":
        return True
    text = str(exc).lower()
    return "max_tokens" in text and ("max_completion_tokens" in text or "unsupported" in text or "not supported" in text)


def _display_url(url: Any) -> str:
    """``url`` without credentials, query or trailing slash (for messages)."""
    from urllib.parse import urlsplit, urlunsplit

    text = str(url or "")
    try:
        parts = urlsplit(text)
    except ValueError:
        return "(unparseable URL)"
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path.rstrip("/"), "", "")) or "(no URL)"


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
