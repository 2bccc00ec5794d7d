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
    gets HTTP 400 (as servers without tool calling do). More shapes: ``{"message": {...}}`` (the
    assistant message as sent, e.g. several ``tool_calls``; ``None`` for ``message: null``),
    ``"finish_reason"``, ``{"body": text}`` (a 200 that is not JSON), ``{"no_choices": True}``, and
    ``"param"`` beside ``"status"`` (the error's ``param``).
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
                    error = {"message": reply["error"], "type": "server_error", "param": reply.get("param"), "code": reply.get("code")}
                    return self._send(reply["status"], {"error": error})
                if "body" in reply:
                    data = reply["body"].encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "text/html")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    return None
                message: dict[str, Any] | None = {"role": "assistant", "content": reply.get("content")}
                finish = "stop"
                if "message" in reply:
                    message = reply["message"]
                    finish = "tool_calls" if message and message.get("tool_calls") else "stop"
                elif "tool_call" in reply:
                    name, args = reply["tool_call"]
                    message["tool_calls"] = [
                        {"id": f"call_{len(server.requests)}", "type": "function", "function": {"name": name, "arguments": json.dumps(args)}}
                    ]
                    finish = "tool_calls"
                payload = {
                    "id": f"chatcmpl-{len(server.requests)}",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": body["model"],
                    "choices": [{"index": 0, "message": message, "finish_reason": reply.get("finish_reason", finish), "logprobs": None}],
                    "usage": {"prompt_tokens": 100, "completion_tokens": 17, "total_tokens": 117},
                }
                if reply.get("no_choices"):
                    del payload["choices"]
                self._send(200, payload)

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
    assert second[-2]["role"] == "assistant" and second[-2]["content"] == "looking for cups"
    assert [(c["id"], c["function"]["name"]) for c in second[-2]["tool_calls"]] == [("call_1", "fake_find")]
    assert json.loads(second[-2]["tool_calls"][0]["function"]["arguments"]) == {"image": "img_0", "label": "cup"}
    assert second[-1]["role"] == "tool" and second[-1]["tool_call_id"] == "call_1"
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


def _call(call_id: str | None, name: str, args: Any, shape: str) -> dict[str, Any]:
    arguments = args if isinstance(args, str) else json.dumps(args)
    call: dict[str, Any] = {"type": "function", "function": {"name": name, "arguments": arguments}}
    if call_id is not None:
        call["id"] = call_id
    if shape == "ollama":  # Ollama's /v1 numbers its calls
        call["index"] = int(call_id.rsplit("_", 1)[-1]) if call_id else 0
    return call


# the assistant message with two tool calls as each server writes it: (content, ids)
SHAPES = {
    "openai": (None, ["call_Ab12", "call_Cd34"]),
    "vllm": ("", ["chatcmpl-tool-9f1e", "chatcmpl-tool-77aa"]),
    "ollama": ("", ["call_0", "call_1"]),
    "llamacpp": (None, ["pTqv3", "xY8Lk"]),
    "no ids": (None, [None, None]),
}


@pytest.mark.parametrize("shape", list(SHAPES))
def test_openai_every_tool_call_of_a_message_runs(openai_config: Any, shared_pool: Any, shape: str) -> None:
    content, call_ids = SHAPES[shape]
    two = {
        "role": "assistant",
        "content": content,
        "tool_calls": [
            _call(call_ids[0], "fake_find", {"image": "img_0", "label": "cup"}, shape),
            _call(call_ids[1], "fake_find", {"image": "img_0", "label": "spoon", "n": 1}, shape),
        ],
    }
    replies = [{"message": two}, {"tool_call": ("final_answer", {"answer": "2 cups, 1 spoon", "evidence": ["det_1_0", "det_2_0"]})}]
    with FakeChatServer(replies) as server:
        answer = Agent(openai_config(server.url), planner="openai", tools=FAKE_TOOLS, pool=shared_pool).ask("Cups and spoons?", ["sample:coffee"])
    assert answer.ok and answer.answer == "2 cups, 1 spoon", answer.error
    tools = [s for s in answer.trace.steps if isinstance(s, ToolStep)]
    assert [(s.call, s.args["label"]) for s in tools] == [(1, "cup"), (2, "spoon")]
    assert [e.id for e in answer.evidence] == ["det_1_0", "det_2_0"]
    assert [e.region["label"] for e in answer.evidence] == ["cup", "spoon"]
    plans = [s for s in answer.trace.steps if isinstance(s, PlannerStep)]
    assert [p.tokens for p in plans] == [17, 0, 17]  # the second call came from the first reply
    assert len(server.requests) == 2  # no request between the two calls
    follow_up = server.requests[1]["messages"]
    assistant, results = follow_up[-3], follow_up[-2:]
    sent_ids = [c["id"] for c in assistant["tool_calls"]]
    assert assistant["role"] == "assistant" and len(set(sent_ids)) == 2
    if call_ids[0] is not None:
        assert sent_ids == call_ids
    assert [c["function"]["name"] for c in assistant["tool_calls"]] == ["fake_find", "fake_find"]
    assert [(m["role"], m["tool_call_id"]) for m in results] == [("tool", sent_ids[0]), ("tool", sent_ids[1])]
    assert results[0]["content"].startswith("obs_1 (fake_find): 2 cup found")
    assert results[1]["content"].startswith("obs_2 (fake_find): 1 spoon found")


def test_openai_a_call_with_bad_arguments_is_answered_too(openai_config: Any, shared_pool: Any) -> None:
    message = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            _call("call_a", "fake_find", '{"image": "img_0", "label": ', "openai"),  # cut JSON
            _call("call_b", "fake_find", {"image": "img_0", "label": "cup"}, "openai"),
        ],
    }
    replies = [{"message": message}, {"tool_call": ("final_answer", {"answer": "2 cups", "evidence": ["det_1_0"]})}]
    with FakeChatServer(replies) as server:
        answer = Agent(openai_config(server.url), planner="openai", tools=FAKE_TOOLS, pool=shared_pool).ask("Cups?", ["sample:coffee"])
    assert answer.ok, answer.error
    assert [s.source for s in answer.trace.steps if isinstance(s, ErrorStep)] == ["planner"]
    assert [s.args["label"] for s in answer.trace.steps if isinstance(s, ToolStep)] == ["cup"]
    follow_up = server.requests[1]["messages"]
    answered = {m["tool_call_id"]: m["content"] for m in follow_up if m["role"] == "tool"}
    assert set(answered) == {"call_a", "call_b"}
    assert "not valid JSON" in answered["call_a"] and answered["call_b"].startswith("obs_1 (fake_find)")


def test_openai_reply_cut_by_max_tokens_ends_the_run(openai_config: Any, shared_pool: Any) -> None:
    replies = [{"content": '{"thought": "I will look for the cups in the', "finish_reason": "length"}] * 4
    with FakeChatServer(replies) as server:
        answer = Agent(openai_config(server.url, max_new_tokens=64), planner="openai", tools=FAKE_TOOLS, pool=shared_pool).ask(
            "How many cups?", ["sample:coffee"]
        )
    assert answer.status == "failed"
    assert "max_tokens=64" in (answer.error or "") and "planner.max_new_tokens" in (answer.error or "")
    assert len(server.requests) == 1  # the same truncated request is not sent again
    errors = [s for s in answer.trace.steps if isinstance(s, ErrorStep)]
    assert len(errors) == 1 and "max_tokens=64" in errors[0].message


def test_openai_tool_calls_written_as_text(openai_config: Any, shared_pool: Any) -> None:
    """vLLM without a tool parser: hermes ``<tool_call>`` blocks in ``content``; bare objects too."""
    hermes = (
        '<tool_call>\n{"name": "fake_find", "arguments": {"image": "img_0", "label": "cup"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "fake_find", "arguments": {"image": "img_0", "label": "spoon", "n": 1}}\n</tool_call>'
    )
    bare = 'Done: {"name": "final_answer", "arguments": {"answer": "2 cups, 1 spoon", "evidence": ["det_1_1", "det_2_0"]}}'
    with FakeChatServer([{"content": hermes}, {"content": bare}]) as server:
        answer = Agent(openai_config(server.url), planner="openai", tools=FAKE_TOOLS, pool=shared_pool).ask("Cups and spoons?", ["sample:coffee"])
    assert answer.ok and answer.answer == "2 cups, 1 spoon", answer.error
    assert [s.args["label"] for s in answer.trace.steps if isinstance(s, ToolStep)] == ["cup", "spoon"]
    assert len(server.requests) == 2
    sent = "\n".join(str(m["content"]) for m in server.requests[1]["messages"][2:])
    assert "obs_1 (fake_find): 2 cup found" in sent and "obs_2 (fake_find): 1 spoon found" in sent


def test_parse_text_tool_calls() -> None:
    from visagent.errors import PlannerOutputError
    from visagent.planners.parsing import text_tool_calls

    assert text_tool_calls('<tool_call>{"name": "a", "arguments": {"x": 1}}</tool_call><tool_call>{"name": "b", "arguments": {}}') == [
        ("a", {"x": 1}),
        ("b", {}),
    ]
    assert text_tool_calls('{"name": "a", "parameters": {"x": 1}} {"name": "b", "arguments": "{}"}') == [("a", {"x": 1}), ("b", "{}")]
    assert text_tool_calls('{"thought": "t", "tool": "a", "args": {}}') == []
    with pytest.raises(PlannerOutputError, match="not valid JSON"):
        text_tool_calls('<tool_call>{"name": "a", "arguments": </tool_call>')


def test_openai_max_completion_tokens_when_max_tokens_is_refused(openai_config: Any, shared_pool: Any) -> None:
    script = [{"tool_call": FIND}, {"tool_call": ("final_answer", {"answer": "2 cups", "evidence": ["det_1_0"]})}]

    def reply(body: dict[str, Any]) -> dict[str, Any]:
        if "max_tokens" in body:
            msg = "Unsupported parameter: 'max_tokens' is not supported with this model. Use 'max_completion_tokens' instead."
            return {"status": 400, "error": msg, "param": "max_tokens", "code": "unsupported_parameter"}
        return script.pop(0)

    with FakeChatServer(reply) as server:
        answer = Agent(openai_config(server.url, max_new_tokens=300), planner="openai", tools=FAKE_TOOLS, pool=shared_pool).ask(
            "How many cups?", ["sample:coffee"]
        )
    assert answer.ok and answer.answer == "2 cups", answer.error
    assert [("max_tokens" in r, r.get("max_completion_tokens"), "tools" in r) for r in server.requests] == [
        (True, None, True),
        (False, 300, True),  # tools kept: the 400 was about max_tokens
        (False, 300, True),  # remembered
    ]


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_openai_connection_error_names_the_endpoint(openai_config: Any, shared_pool: Any) -> None:
    url = f"http://127.0.0.1:{_closed_port()}/v1"
    answer = Agent(openai_config(url, max_retries=0), planner="openai", tools=FAKE_TOOLS, pool=shared_pool).ask("Cups?", ["sample:coffee"])
    assert answer.status == "failed"
    assert answer.error == f"the planner endpoint {url} failed: Connection error."
    assert "sk-test-123" not in answer.trace.model_dump_json()


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ({"status": 503, "error": "model is loading"}, "failed with HTTP 503"),
        ({"body": "<html><body>It works!</body></html>"}, "did not answer with a chat completion"),
        ({"message": None}, "answered a choice without a message"),
        ({"no_choices": True}, "answered a chat completion without choices"),
    ],
)
def test_openai_endpoint_answers_that_end_the_run(openai_config: Any, shared_pool: Any, reply: dict[str, Any], expected: str) -> None:
    with FakeChatServer([reply] * 4) as server:
        agent = Agent(openai_config(server.url, max_retries=0), planner="openai", tools=FAKE_TOOLS, pool=shared_pool)
        answer = agent.ask("Cups?", ["sample:coffee"])
    assert answer.status == "failed" and len(server.requests) == 1
    assert (answer.error or "").startswith(f"the planner endpoint {server.url} ") and expected in (answer.error or ""), answer.error
    assert "sk-test-123" not in (answer.error or "")


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
