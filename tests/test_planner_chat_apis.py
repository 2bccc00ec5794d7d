"""The OpenAI-compatible planner against a local HTTP server speaking the chat-completions
protocol (through the real ``openai`` client), and the LangChain planner with langchain_core's
fake chat models."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tests.fakes import FAKE_TOOLS
from visagent.agent import Agent
from visagent.errors import UsageError
from visagent.planners import make_planner
from visagent.types import ErrorStep, PlannerStep, ToolStep


class FakeChatServer:
    """``POST /v1/chat/completions`` answering from a script; records every request body.

    Each scripted reply is ``{"tool_call": (name, args)}``, ``{"content": text}`` or
    ``{"status": code, "error": text}``; ``replies`` is a list of them, or a function of the request body. With ``reject_tools`` any request carrying ``tools``
    gets HTTP 400 (as servers without tool calling do).
    """

    def __init__(self, replies: list[dict[str, Any]] | Callable[[dict[str, Any]], dict[str, Any]], reject_tools: bool = False) -> None:
        self.replies = replies if callable(replies) else list(replies)
        self.reject_tools = reject_tools
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server API
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append(body)
                server.headers.append({k.lower(): v for k, v in self.headers.items()})
                if self.path != "/v1/chat/completions":
                    return self._send(404, {"error": {"message": "not found", "type": "invalid_request_error"}})
                if server.reject_tools and "tools" in body:
                    return self._send(400, {"error": {"message": "tools are not supported by this model", "type": "invalid_request_error"}})
                reply = server.replies(body) if callable(server.replies) else server.replies.pop(0)
                if "status" in reply:
                    return self._send(reply["status"], {"error": {"message": reply["error"], "type": "server_error"}})
                message: dict[str, Any] = {"role": "assistant", "content": reply.get("content")}
                finish = "stop"
                if "tool_call" in reply:
                    name, args = reply["tool_call"]
                    message["tool_calls"] = [
                        {"id": f"call_{len(server.requests)}", "type": "function", "function": {"name": name, "arguments": json.dumps(args)}}
                    ]
                    finish = "tool_calls"
                self._send(
                    200,
                    {
                        "id": f"chatcmpl-{len(server.requests)}",
                        "object": "chat.completion",
                        "created": int(time.time()),
                        "model": body["model"],
                        "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
                        "usage": {"prompt_tokens": 100, "completion_tokens": 17, "total_tokens": 117},
                    },
                )

            def _send(self, code: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> "FakeChatServer":
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def openai_config(tiny_config: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.setenv("VISAGENT_TEST_KEY", "sk-test-123")

    def make(url: str, **extra: Any) -> Any:
        planner = tiny_config.planner.model_copy(
            update={"kind": "openai", "base_url": url, "model": "llava-hf/llava-1.5-7b-hf", "api_key_env": "VISAGENT_TEST_KEY", **extra}
        )
        return tiny_config.model_copy(update={"planner": planner})

    yield make


FIND = ("fake_find", {"image": "img_0", "label": "cup"})


def test_openai_native_tool_calls(openai_config: Any, shared_pool: Any) -> None:
    replies = [{"tool_call": FIND, "content": "looking for cups"}, {"tool_call": ("final_answer", {"answer": "2 cups", "evidence": ["det_1_0", "det_1_1"]})}]
    with FakeChatServer(replies) as server:
        cfg = openai_config(server.url)
        agent = Agent(cfg, planner="openai", tools=FAKE_TOOLS, pool=shared_pool)
        answer = agent.ask("How many cups are there?", ["sample:coffee"])
    assert answer.ok and answer.answer == "2 cups"
    assert [e.id for e in answer.evidence] == ["det_1_0", "det_1_1"]
    tool_step = [s for s in answer.trace.steps if isinstance(s, ToolStep)][0]
    assert tool_step.tool == "fake_find" and tool_step.args == {"image": "img_0", "label": "cup"}
    plan = [s for s in answer.trace.steps if isinstance(s, PlannerStep)]
    assert plan[0].thought == "looking for cups" and plan[0].tokens == 17
    assert json.loads(plan[0].raw)["tool_calls"][0]["name"] == "fake_find"
    # what went over the wire
    first = server.requests[0]
    assert server.headers[0]["authorization"] == "Bearer sk-test-123"
    assert first["model"] == "llava-hf/llava-1.5-7b-hf" and first["temperature"] == 0.0 and first["seed"] == cfg.planner.seed
    names = [t["function"]["name"] for t in first["tools"]]
    assert names == ["fake_find", "echo", "noop", "final_answer"]
    assert first["tools"][0]["function"]["parameters"]["required"] == ["image", "label"]
    user = first["messages"][1]
    assert user["role"] == "user" and user["content"][0]["type"] == "image_url"
    assert user["content"][0]["image_url"]["url"].startswith("data:image/jpeg;base64,")
    assert "Question: How many cups are there?" in user["content"][1]["text"]
    second = server.requests[1]["messages"]
    assert second[-2]["role"] == "assistant" and json.loads(second[-2]["content"])["tool"] == "fake_find"
    assert second[-1]["content"].startswith("obs_1 (fake_find): 2 cup found")


def test_openai_falls_back_to_json_text(openai_config: Any, shared_pool: Any) -> None:
    replies = [
        {"content": 'Sure. {"thought": "count", "tool": "fake_find", "args": {"image": "img_0", "label": "cup", "n": 3}}'},
        {"content": "```json\n{\"thought\": \"done\", \"final\": \"3 cups\", \"evidence\": [\"obs_1\"]}\n```"},
    ]
    with FakeChatServer(replies, reject_tools=True) as server:
        agent = Agent(openai_config(server.url), planner="openai", tools=FAKE_TOOLS, pool=shared_pool)
        answer = agent.ask("How many cups are there?", ["sample:coffee"])
    assert answer.ok and answer.answer == "3 cups"
    # the first request had tools and was rejected; every later request goes without them
    assert ["tools" in r for r in server.requests] == [True, False, False]
    assert len([s for s in answer.trace.steps if isinstance(s, ToolStep)][0].output["detections"]) == 3


def test_openai_bad_output_and_server_errors(openai_config: Any, shared_pool: Any) -> None:
    replies = [{"content": "I cannot decide."}, {"tool_call": ("fake_find", {"image": "img_0"})}, {"status": 500, "error": "overloaded"}, {"status": 500, "error": "overloaded"}]
    with FakeChatServer(replies) as server:
        agent = Agent(openai_config(server.url, max_retries=0), planner="openai", tools=FAKE_TOOLS, pool=shared_pool)
        answer = agent.ask("How many cups are there?", ["sample:coffee"])
    sources = [s.source for s in answer.trace.steps if isinstance(s, ErrorStep)]
    assert sources[:2] == ["planner", "args"]  # unparseable text, then a schema error: both sent back
    assert answer.status == "failed" and "overloaded" in (answer.error or "")


def test_openai_needs_a_model(tiny_config: Any) -> None:
    with pytest.raises(UsageError, match="needs a model"):
        make_planner("openai", tiny_config)


# -- LangChain ----------------------------------------------------------------------------------
def test_langchain_planner_with_tool_calls(tiny_config: Any, shared_pool: Any) -> None:
    from langchain_core.language_models import FakeMessagesListChatModel
    from langchain_core.messages import AIMessage

    model = FakeMessagesListChatModel(
        responses=[
            AIMessage(content="", tool_calls=[{"name": "fake_find", "args": {"image": "img_0", "label": "cup"}, "id": "c1"}]),
            AIMessage(content="", tool_calls=[{"name": "final_answer", "args": {"answer": "two cups", "evidence": ["det_1_1"]}, "id": "c2"}]),
        ]
    )
    seen: list[Any] = []
    original = FakeMessagesListChatModel._generate

    def spy(self: Any, messages: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append(messages)
        return original(self, messages, *args, **kwargs)

    FakeMessagesListChatModel._generate = spy  # type: ignore[method-assign]
    try:
        planner = make_planner("langchain", tiny_config, chat_model=model)
        answer = Agent(tiny_config, planner=planner, tools=FAKE_TOOLS, pool=shared_pool).ask("How many cups?", ["sample:coffee"])
    finally:
        FakeMessagesListChatModel._generate = original  # type: ignore[method-assign]
    assert answer.ok and answer.answer == "two cups" and [e.id for e in answer.evidence] == ["det_1_1"]
    first = seen[0]
    assert [m.type for m in first] == ["system", "human"]
    assert first[1].content[0]["image_url"]["url"].startswith("data:image/jpeg;base64,")
    assert [m.type for m in seen[1]][-2:] == ["ai", "human"] and seen[1][-1].content.startswith("obs_1 (fake_find)")


def test_langchain_planner_json_text_without_bind_tools(tiny_config: Any, shared_pool: Any) -> None:
    from langchain_core.language_models import GenericFakeChatModel
    from langchain_core.messages import AIMessage

    class NoTools(GenericFakeChatModel):
        def bind_tools(self, tools: Any, **kwargs: Any) -> Any:
            raise NotImplementedError

    model = NoTools(
        messages=iter(
            [
                AIMessage(content='{"thought": "look", "tool": "fake_find", "args": {"image": "img_0", "label": "spoon", "n": 1}}'),
                AIMessage(content='{"thought": "found", "final": "one spoon", "evidence": ["det_1_0"]}'),
            ]
        )
    )
    answer = Agent(tiny_config, planner=make_planner("langchain", tiny_config, chat_model=model), tools=FAKE_TOOLS, pool=shared_pool).ask(
        "Where is the spoon?", ["sample:coffee"]
    )
    assert answer.ok and answer.answer == "one spoon"
    assert answer.evidence[0].region["label"] == "spoon"


def test_langchain_needs_a_chat_model(tiny_config: Any) -> None:
    with pytest.raises(UsageError, match="needs a chat model"):
        make_planner("langchain", tiny_config)
    with pytest.raises(UsageError, match="BaseChatModel"):
        make_planner("langchain", tiny_config, chat_model=object())
