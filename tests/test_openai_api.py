"""``/v1/chat/completions`` with the real ``openai`` client and LangChain's ``ChatOpenAI``, against
``visagent serve`` on 127.0.0.1 (tiny profile, a scripted planner)."""

from __future__ import annotations

import base64
import io
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from PIL import Image

from tests.test_server import free_port, start, stop

openai = pytest.importorskip("openai", reason="the openai extra is installed by make test")

TOKEN = "chat-token-7Yq"
PLAN = """\
- {tool: segment, args: {image: img_0, points: [[20, 15]]}}
- {final: "There is one object.", evidence: [mask_1_0]}
"""


def data_url(w: int = 40, h: int = 30) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (10, 120, 200)).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("chat-server")
    (tmp / "plan.yaml").write_text(PLAN)
    port = free_port()
    cmd = [sys.executable, "-m", "visagent.cli", "serve", "--profile", "tiny", "--planner", f"script:{tmp / 'plan.yaml'}",
           "--port", str(port), "--token", TOKEN]  # fmt: skip
    proc = start(cmd, port, tmp / "server.log")
    yield f"http://127.0.0.1:{port}/v1"
    stop(proc)
    assert "Traceback" not in (tmp / "server.log").read_text()


def user(text: str, *images: str) -> dict[str, Any]:
    return {"role": "user", "content": [{"type": "text", "text": text}, *({"type": "image_url", "image_url": {"url": u}} for u in images)]}


def test_openai_client_gets_the_grounded_answer(server: str) -> None:
    client = openai.OpenAI(base_url=server, api_key=TOKEN, max_retries=0)
    assert "visagent" in [m.id for m in client.models.list().data]
    resp = client.chat.completions.create(model="visagent", messages=[user("How many objects?", data_url())])
    assert resp.object == "chat.completion" and resp.choices[0].message.content == "There is one object."
    extra = resp.model_extra["visagent"]
    assert extra["status"] == "answered" and [e["id"] for e in extra["evidence"]] == ["mask_1_0"] and extra["trace_id"]
    assert resp.id == f"chatcmpl-{extra['trace_id']}"


def test_streamed_steps_then_the_answer(server: str) -> None:
    client = openai.OpenAI(base_url=server, api_key=TOKEN, max_retries=0)
    reasoning, content, last = [], [], None
    for chunk in client.chat.completions.create(model="visagent", messages=[user("How many objects?", data_url())], stream=True):
        delta = chunk.choices[0].delta
        if (delta.model_extra or {}).get("reasoning_content"):
            reasoning.append(delta.model_extra["reasoning_content"])
        if delta.content:
            content.append(delta.content)
        last = chunk
    assert "".join(content) == "There is one object."
    assert any("tool  segment" in r for r in reasoning) and any("final" in r for r in reasoning)
    assert last is not None and last.choices[0].finish_reason == "stop" and last.model_extra["visagent"]["evidence"][0]["id"] == "mask_1_0"


def test_history_and_earlier_images_are_honoured(server: str) -> None:
    import httpx

    messages = [user("What is this?", data_url(40, 30)), {"role": "assistant", "content": "A blue square."}, user("And how many?")]
    r = httpx.post(f"{server}/chat/completions", json={"model": "visagent", "messages": messages}, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
    assert r.status_code == 200, r.text
    trace_id = r.json()["visagent"]["trace_id"]
    assert r.json()["choices"][0]["message"]["content"] == "There is one object." and trace_id


def test_errors_come_in_openai_shape(server: str) -> None:
    client = openai.OpenAI(base_url=server, api_key=TOKEN, max_retries=0)
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="visagent", messages=[user("no image here")])
    assert "no image in the conversation" in err.value.message and err.value.body["type"] == "invalid_request_error"
    with pytest.raises(openai.BadRequestError, match="not a data: URL"):
        client.chat.completions.create(model="visagent", messages=[user("q", "file:///etc/passwd")])
    with pytest.raises(openai.BadRequestError, match="not an image"):
        client.chat.completions.create(model="visagent", messages=[user("q", "data:image/png;base64," + base64.b64encode(b"junk").decode())])
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server, api_key="wrong", max_retries=0).chat.completions.create(model="visagent", messages=[user("q", data_url())])


def test_langchain_chat_openai(server: str) -> None:
    lc = pytest.importorskip("langchain_openai", reason="installed with the langchain extra")
    from langchain_core.messages import HumanMessage

    model = lc.ChatOpenAI(base_url=server, api_key=TOKEN, model="visagent", max_retries=0)
    reply = model.invoke([HumanMessage(content=[{"type": "text", "text": "How many objects?"}, {"type": "image_url", "image_url": {"url": data_url()}}])])
    assert reply.content == "There is one object."

