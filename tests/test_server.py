"""The HTTP server against real uvicorn processes on 127.0.0.1 (httpx clients).

Two servers: ``visagent serve`` (the CLI) with the built-in tools, a scripted plan and the real
segment tool on the tiny SAM; and a small script serving fake tools whose run time the question
sets, for the concurrency limit (429) and the per-request timeout (504).
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
REPO = Path(__file__).resolve().parent.parent

PLAN = """
- tool: segment
  args: {image: img_0, boxes: [[2, 2, 30, 20]]}
- final: one thing, segmented
  evidence: [mask_1_0]
"""

FAKE_SERVER = """
import sys
from visagent.agent import Agent
from visagent.config import load_config
from visagent.planners import FunctionPlanner
from visagent.server import load_settings, serve
from tests.fakes import FAKE_TOOLS

def plan(state):
    if state.steps:
        return {"final": "slept", "evidence": ["obs_1"]}
    seconds = float(state.question.split(":", 1)[1]) if state.question.startswith("sleep:") else 0.0
    return {"tool": "echo", "args": {"text": "zz", "sleep": seconds}}

cfg = load_config(profile="tiny")
agent = Agent(cfg, planner=FunctionPlanner(plan), tools=FAKE_TOOLS)
settings = load_settings(cfg, port=int(sys.argv[1]), max_concurrency=1, max_queue=1, timeout_s=1.5)
serve(agent, settings)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(
    cmd: list[str], port: int, log: Path, env: dict[str, str] | None = None, *,
    path: str = "/healthz", headers: dict[str, str] | None = None, wait_s: float = 90,
) -> subprocess.Popen[bytes]:  # fmt: skip
    """Start ``cmd`` and wait until ``path`` on ``port`` answers 200 (or the process ends)."""
    fh = open(log, "wb")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT, env=env or os.environ.copy())
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}{path}", headers=headers, timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise AssertionError(f"server did not come up in {wait_s:g} s: {log.read_text()[-2000:]}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("media-root")


@pytest.fixture(scope="module")
def traces(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("traces")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, root: Path, traces: Path) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("server")
    (tmp / "plan.yaml").write_text(PLAN)
    (tmp / "config.yaml").write_text(
        json.dumps(
            {
                "server": {
                    "allowed_roots": [str(root)],
                    "max_request_bytes": 2_000_000,
                    "max_pixels": 1_000_000,
                    "max_steps": 6,
                    "max_concurrency": 4,
                    "max_queue": 64,
                    "timeout_s": 120,
                    # one test client sends 32 requests at once
                    "max_connections_per_client": 40,
                    "max_requests_per_client": 40,
                }
            }
        )
    )
    port = free_port()
    cmd = [sys.executable, "-m", "visagent.cli", "serve", "--profile", "tiny", "--config", str(tmp / "config.yaml"),
           "--planner", f"script:{tmp / 'plan.yaml'}", "--port", str(port), "--token", TOKEN,
           "--trace-dir", str(traces)]  # fmt: skip
    proc = start(cmd, port, tmp / "server.log")
    yield f"http://127.0.0.1:{port}"
    stop(proc)
    log = (tmp / "server.log").read_text()
    assert "Traceback" not in log or "request failed" in log


@pytest.fixture(scope="module")
def fake_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("fake-server")
    port = free_port()
    proc = start([sys.executable, "-c", FAKE_SERVER, str(port)], port, tmp / "server.log")
    yield f"http://127.0.0.1:{port}"
    stop(proc)


def png(w: int = 64, h: int = 48, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def test_healthz_without_auth(server: str) -> None:
    r = httpx.get(f"{server}/healthz")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok" and body["max_concurrency"] == 4 and body["max_queue"] == 64


@pytest.mark.parametrize("path", ["/v1/tools", "/v1/models"])
def test_auth_required(server: str, path: str) -> None:
    r = httpx.get(server + path)
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == "Bearer"
    assert "bearer token" in r.json()["detail"]
    assert httpx.get(server + path, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert httpx.get(server + path, headers=AUTH).status_code == 200
    r = httpx.post(f"{server}/v1/ask", files={"files": ("a.png", png())}, data={"question": "q"})
    assert r.status_code == 401


def test_tools_and_openapi(server: str) -> None:
    tools = httpx.get(f"{server}/v1/tools", headers=AUTH).json()
    by_name = {t["name"]: t for t in tools}
    assert "segment" in by_name
    assert "boxes" in by_name["segment"]["input_schema"]["properties"]
    schema = httpx.get(f"{server}/openapi.json").json()
    assert {"/v1/ask", "/v1/ask/stream", "/v1/tools", "/v1/models", "/healthz"} <= set(schema["paths"])
    body = schema["paths"]["/v1/ask"]["post"]["requestBody"]["content"]
    assert set(body) == {"application/json", "multipart/form-data"}
    assert "MediaItem" in schema["components"]["schemas"]


def test_each_request_leaves_a_replayable_trace(server: str, traces: Path) -> None:
    from visagent.replay import replay

    files = [("files", ("a.png", png(64, 48, 3), "image/png"))]
    r = httpx.post(f"{server}/v1/ask", headers=AUTH, files=files, data={"question": "what is there?", "include_trace": "false"}, timeout=60)
    assert r.status_code == 200, r.text
    path = traces / f"{r.json()['trace']['meta']['run_id']}.jsonl"
    assert path.is_file()  # the upload itself is gone with the request; its copy stays beside the trace
    result = replay(path)
    assert result.same, result.divergence
    assert result.answer.answer == r.json()["answer"] and result.models_loaded == 0


def test_ask_multipart_two_files(server: str) -> None:
    files = [("files", ("a.png", png(64, 48, 1), "image/png")), ("files", ("b b.png", png(40, 32, 2), "image/png"))]
    r = httpx.post(f"{server}/v1/ask", headers=AUTH, files=files, data={"question": "what is there?"}, timeout=60)
    assert r.status_code == 200, r.text
    ans = r.json()
    assert ans["status"] == "answered" and ans["answer"] == "one thing, segmented"
    ev = ans["evidence"][0]
    assert ev["id"] == "mask_1_0" and ev["tool"] == "segment" and ev["region"]["image"] == "img_0"
    media = ans["trace"]["meta"]["media"]
    assert [(m["id"], m["width"], m["height"]) for m in media] == [("img_0", 64, 48), ("img_1", 40, 32)]
    tool_step = next(s for s in ans["trace"]["steps"] if s["type"] == "tool")
    assert tool_step["models"] == ["tiny:sam"]
    models = httpx.get(f"{server}/v1/models", headers=AUTH).json()
    assert models["checkpoints"]["segment"]["checkpoint"] == "tiny:sam"
    assert models["profile"] == "tiny" and models["planner"].startswith("script:")
    sam = [m for m in models["pool"]["models"] if m["family"] == "segment"]
    assert len(sam) == 1 and sam[0]["loads"] == 1 and sam[0]["bytes"] > 0


def test_ask_json_base64_sample_and_paths(server: str, root: Path) -> None:
    data = base64.b64encode(png(50, 40, 3)).decode()
    r = httpx.post(
        f"{server}/v1/ask", headers=AUTH, json={"question": "q", "media": [{"data": data, "filename": "x.png"}], "include_trace": False}, timeout=60
    )
    assert r.status_code == 200, r.text
    assert r.json()["evidence"][0]["id"] == "mask_1_0"
    assert r.json()["trace"]["steps"] == []
    assert r.json()["trace"]["meta"]["media"][0]["width"] == 50
    r = httpx.post(f"{server}/v1/ask", headers=AUTH, json={"question": "q", "media": [{"data": "data:image/png;base64," + data}]}, timeout=60)
    assert r.status_code == 200, r.text
    r = httpx.post(f"{server}/v1/ask", headers=AUTH, json={"question": "q", "media": [{"sample": "coffee"}]}, timeout=60)
    assert r.status_code == 200 and r.json()["trace"]["meta"]["media"][0]["width"] == 600
    inside = root / "in.png"
    inside.write_bytes(png(36, 36, 4))
    r = httpx.post(f"{server}/v1/ask", headers=AUTH, json={"question": "q", "media": [{"path": str(inside)}]}, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["trace"]["meta"]["media"][0]["source"] == str(inside.resolve())


@pytest.mark.parametrize("path", ["/etc/hostname", "{root}/../outside.png", "{root}2/x.png"])
def test_paths_outside_roots_are_forbidden(server: str, root: Path, path: str) -> None:
    (root.parent / "outside.png").write_bytes(png())
    r = httpx.post(f"{server}/v1/ask", headers=AUTH, json={"question": "q", "media": [{"path": path.format(root=root)}]})
    assert r.status_code == 403
    assert "outside the allowed roots" in r.json()["detail"]


def test_bad_media_and_bad_requests(server: str, root: Path) -> None:
    r = httpx.post(f"{server}/v1/ask", headers=AUTH, files={"files": ("junk.png", b"this is not an image")}, data={"question": "q"})
    assert r.status_code == 400
    detail = r.json()["detail"]
    assert "junk.png" in detail and "not an image" in detail and "\n" not in detail
    assert "Traceback" not in r.text
    cases = [
        ({"json": {"question": "q", "media": [{"data": "@@not base64@@"}]}}, 400, "not valid base64"),
        ({"json": {"question": "q", "media": [{"sample": "nope"}]}}, 400, "unknown sample image"),
        ({"json": {"question": "q", "media": [{"path": str(root / "missing.png")}]}}, 400, "media not found"),
        ({"json": {"question": "q", "media": [{"sample": "coffee"}], "max_steps": 99}}, 400, "max_steps must be between 1 and 6"),
        ({"json": {"question": "q", "media": [{"sample": "coffee", "path": "/x"}]}}, 422, "exactly one of"),
        ({"json": {"question": "", "media": [{"sample": "coffee"}]}}, 422, "question"),
        ({"content": b"{not json", "headers": {"content-type": "application/json"}}, 422, "invalid request"),
        ({"content": b"hello", "headers": {"content-type": "text/plain"}}, 415, "unsupported content type"),
        ({"data": {"question": "q"}, "files": {"other": ("a.png", png())}}, 400, "at least one file"),
        ({"data": {"question": "q", "max_steps": "lots"}, "files": {"files": ("a.png", png())}}, 400, "max_steps must be an integer"),
    ]
    for kwargs, status, text in cases:
        headers = {**AUTH, **kwargs.pop("headers", {})}
        r = httpx.post(f"{server}/v1/ask", headers=headers, timeout=60, **kwargs)
        assert r.status_code == status, (kwargs, r.text)
        assert text in r.json()["detail"], r.text


def test_size_and_pixel_limits(server: str) -> None:
    big = os.urandom(2_100_000)
    r = httpx.post(f"{server}/v1/ask", headers=AUTH, files={"files": ("big.png", big)}, data={"question": "q"})
    assert r.status_code == 413 and "over the limit of 2000000 bytes" in r.json()["detail"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it streams
        for _ in range(30):
            yield b"x" * 100_000

    r = httpx.post(f"{server}/v1/ask", headers={**AUTH, "content-type": "application/json"}, content=chunks())
    assert r.status_code == 413
    buf = io.BytesIO()
    Image.new("RGB", (1200, 1000), (10, 20, 30)).save(buf, format="PNG")  # 1.2 MP, a few KB
    r = httpx.post(f"{server}/v1/ask", headers=AUTH, files={"files": ("wide.png", buf.getvalue())}, data={"question": "q"})
    assert r.status_code == 413
    assert "1200x1000" in r.json()["detail"] and "over the server limit of 1.0 MP" in r.json()["detail"]


def parse_sse(text: str) -> list[tuple[str, Any]]:
    events = []
    for block in text.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        events.append((fields["event"], json.loads(fields["data"])))
    return events


def test_stream_server_sent_events(server: str) -> None:
    seen: list[str] = []
    with httpx.stream(
        "POST", f"{server}/v1/ask/stream", headers=AUTH, files={"files": ("a.png", png())}, data={"question": "stream it"}, timeout=60
    ) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        text = ""
        for chunk in r.iter_text():
            text += chunk
            seen.append(chunk)
    events = parse_sse(text)
    kinds = [e for e, _ in events]
    assert kinds == ["meta", "step", "step", "step", "step", "answer"]
    assert events[0][1]["question"] == "stream it" and events[0][1]["run_id"]  # the trace's first line
    assert [d["type"] for _, d in events[1:5]] == ["planner", "tool", "planner", "final"]
    assert events[2][1]["tool"] == "segment"
    answer = events[-1][1]
    assert answer["status"] == "answered" and answer["evidence"][0]["id"] == "mask_1_0"
    assert answer["trace"]["meta"]["question"] == "stream it"
    # errors before the stream starts are plain HTTP errors
    r = httpx.post(f"{server}/v1/ask/stream", headers=AUTH, json={"question": "q", "media": [{"sample": "nope"}]})
    assert r.status_code == 400
    assert httpx.post(f"{server}/v1/ask/stream", json={"question": "q", "media": [{"sample": "coffee"}]}).status_code == 401


def test_32_concurrent_asks_all_answered(server: str) -> None:
    async def main() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server, headers=AUTH, timeout=120) as client:

            async def one(i: int) -> httpx.Response:
                return await client.post(
                    "/v1/ask", files={"files": (f"{i}.png", png(48 + i, 40, i))}, data={"question": f"question {i}"}
                )

            return await asyncio.gather(*(one(i) for i in range(32)))

    before = httpx.get(f"{server}/healthz").json()["served"]
    responses = asyncio.run(main())
    assert [r.status_code for r in responses] == [200] * 32
    for i, r in enumerate(responses):
        ans = r.json()
        assert ans["status"] == "answered"
        assert ans["trace"]["meta"]["question"] == f"question {i}"
        assert ans["trace"]["meta"]["media"][0]["width"] == 48 + i  # each got its own upload
    health = httpx.get(f"{server}/healthz").json()
    assert health["served"] - before == 32 and health["refused"] == 0 and health["active"] == 0
    sam = [m for m in httpx.get(f"{server}/v1/models", headers=AUTH).json()["pool"]["models"] if m["family"] == "segment"]
    assert len(sam) == 1 and sam[0]["loads"] == 1  # one copy of the model for every request


def test_queue_full_is_429_and_timeout_is_504(fake_server: str) -> None:
    async def main() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=fake_server, timeout=30) as client:

            async def one(i: int) -> httpx.Response:
                await asyncio.sleep(0.05 * i)  # arrive in order
                return await client.post("/v1/ask", json={"question": "sleep:0.6", "media": [{"sample": "coins"}]})

            return await asyncio.gather(*(one(i) for i in range(3)))

    codes = [r.status_code for r in asyncio.run(main())]
    assert codes == [200, 200, 429], codes
    assert fake_server  # the third found 1 running + 1 queued
    health = httpx.get(f"{fake_server}/healthz").json()
    assert health["refused"] == 1 and health["served"] == 2
    t0 = time.monotonic()
    r = httpx.post(f"{fake_server}/v1/ask", json={"question": "sleep:3", "media": [{"sample": "coins"}]}, timeout=30)
    assert r.status_code == 504
    assert "longer than 1.5 s" in r.json()["detail"]
    assert time.monotonic() - t0 < 2.9
    # the slot is held until the worker ends, then the server serves again
    deadline = time.monotonic() + 10
    while httpx.get(f"{fake_server}/healthz").json()["active"] and time.monotonic() < deadline:
        time.sleep(0.1)
    r = httpx.post(f"{fake_server}/v1/ask", json={"question": "sleep:0", "media": [{"sample": "coins"}]}, timeout=30)
    assert r.status_code == 200 and r.json()["answer"] == "slept"


def test_serve_refuses_public_host_without_token() -> None:
    env = {k: v for k, v in os.environ.items() if k != "VISAGENT_TOKEN"}
    r = subprocess.run(
        [sys.executable, "-m", "visagent.cli", "serve", "--host", "0.0.0.0", "--profile", "tiny"],
        capture_output=True, text=True, timeout=60, env=env, cwd=REPO,
    )  # fmt: skip
    assert r.returncode == 2
    assert "refusing to listen on 0.0.0.0 without a token" in r.stderr
    from visagent.errors import UsageError
    from visagent.server import ServerSettings, is_loopback, serve

    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("127.0.0.2")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.4")
    with pytest.raises(UsageError, match="refusing to listen"):
        serve(None, ServerSettings(host="0.0.0.0"))  # type: ignore[arg-type]


def test_schemathesis(server: str) -> None:
    """Generated requests against the OpenAPI schema: no 5xx, documented codes, conforming bodies."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from schemathesis.checks import (
        content_type_conformance,
        not_a_server_error,
        response_schema_conformance,
        status_code_conformance,
    )

    schema = schemathesis.openapi.from_url(f"{server}/openapi.json")
    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
    ran = 0
    statuses: list[tuple[str, int]] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        strategy = operation.as_strategy()

        @given(case=strategy)
        @settings(max_examples=6, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        def check(case: Any) -> None:
            response = case.call_and_validate(headers=AUTH, checks=checks, timeout=60)
            statuses.append((case.path, response.status_code))

        check()
        ran += 1
    assert ran == 7
    assert {p for p, _ in statuses} == {
        "/v1/ask", "/v1/ask/stream", "/v1/chat/completions", "/v1/tools", "/v1/models", "/healthz", "/v1/sessions/{session_id}",
    }  # fmt: skip
    assert len(statuses) >= 15
