"""The MCP server with the ``mcp`` SDK's own client: over stdio (``visagent mcp`` as a subprocess)
and over streamable HTTP (``/mcp`` on ``visagent serve``, uvicorn on 127.0.0.1)."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tests.test_server import free_port, start, stop

mcp = pytest.importorskip("mcp", reason="the mcp extra is installed by make test")
from mcp import Client  # noqa: E402
from mcp.client.stdio import StdioServerParameters  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TOKEN = "mcp-token-3Kd"
# the ask tool's scripted plan: this turn's count is the session's third call
PLAN = "- {tool: count, args: {image: img_0, label: cup}}\n- {final: two cups, evidence: [obs_3]}\n"
DETECT = {"labels": ["cup"], "box_threshold": 0.0, "text_threshold": 0.0}


async def _scenario(client: Any, image: str, outside: str) -> None:
    names = [t.name for t in (await client.list_tools()).tools]
    assert {"detect", "segment", "caption", "ask"} <= set(names)
    det = await client.call_tool("detect", {"image": image, **DETECT})
    assert not det.is_error, det.content[0].text
    assert det.structured_content["detections"][0]["id"] == "det_1_0" and "det_1_0" in det.content[0].text
    assert [c.type for c in det.content] == ["text", "image"]  # the boxes drawn
    meta = {"visagent/session": (det.meta or {}).get("visagent/session")}
    # the detection id from the first call, in the next: one visagent session per MCP session
    seg = await client.call_tool("segment", {"image": "img_0", "boxes": ["det_1_0"]}, meta=meta)
    assert not seg.is_error, seg.content[0].text
    assert seg.structured_content["masks"][0]["id"] == "mask_2_0" and "from det_1_0" in seg.content[0].text
    ask = await client.call_tool("ask", {"question": "How many cups?", "media": ["img_0"]}, meta=meta)
    assert not ask.is_error, ask.content[0].text
    assert ask.structured_content["answer"] == "two cups" and ask.structured_content["evidence"][0]["id"] == "obs_3"
    bad = await client.call_tool("detect", {"image": "img_0"}, meta=meta)
    assert bad.is_error and "labels: Field required" in bad.content[0].text
    refused = await client.call_tool("caption", {"image": outside}, meta=meta)
    assert refused.is_error and "outside the allowed roots" in refused.content[0].text
    # a long tool reports progress (the video's frames registered one by one)
    heard: list[tuple[float, float | None, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        heard.append((progress, total, message))

    video = str(Path(image).parent / "clip.mp4")
    frames = await client.call_tool("video_frames", {"video": video, "frames": 3}, progress_callback=on_progress, meta=meta)
    assert not frames.is_error, frames.content[0].text
    assert heard and heard[-1][0] == heard[-1][1]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("mcp")
    root, outside = tmp / "root", tmp / "outside"
    root.mkdir()
    outside.mkdir()
    Image.new("RGB", (96, 64), (120, 80, 40)).save(root / "table.png")
    Image.new("RGB", (32, 32)).save(outside / "private.png")
    (root / "clip.mp4").write_bytes((REPO / "scenarios" / "media" / "moving_square.mp4").read_bytes())
    (tmp / "plan.yaml").write_text(PLAN)
    return {"tmp": tmp, "root": root, "image": root / "table.png", "outside": outside / "private.png", "plan": tmp / "plan.yaml"}


def test_stdio_with_the_sdk_client(files: dict[str, Path]) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    args = ["-m", "visagent.cli", "mcp", "--profile", "tiny", "--planner", f"script:{files['plan']}", "--allow-root", str(files["root"])]

    async def main() -> None:
        async with Client(StdioServerParameters(command=sys.executable, args=args, env=env, cwd=str(REPO))) as client:
            await _scenario(client, str(files["image"]), str(files["outside"]))

    asyncio.run(asyncio.wait_for(main(), 240))


@pytest.fixture(scope="module")
def http_server(files: dict[str, Path]) -> Iterator[str]:
    port = free_port()
    cmd = [sys.executable, "-m", "visagent.cli", "serve", "--profile", "tiny", "--planner", f"script:{files['plan']}",
           "--port", str(port), "--token", TOKEN, "--allow-root", str(files["root"])]  # fmt: skip
    proc = start(cmd, port, files["tmp"] / "server.log")
    yield f"http://127.0.0.1:{port}/mcp"
    stop(proc)


def _client(url: str, token: str) -> Any:
    import httpx2
    from mcp.client.streamable_http import streamable_http_client

    return Client(streamable_http_client(url, http_client=httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=120)))


def test_streamable_http_with_the_sdk_client(http_server: str, files: dict[str, Path]) -> None:
    async def main() -> None:
        async with _client(http_server, TOKEN) as client:
            await _scenario(client, str(files["image"]), str(files["outside"]))

    asyncio.run(asyncio.wait_for(main(), 240))


def test_streamable_http_needs_the_token(http_server: str) -> None:
    import httpx

    r = httpx.post(http_server, json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, headers={"Authorization": "Bearer wrong"}, timeout=10)
    assert r.status_code == 401 and "bearer token" in r.json()["detail"]
    missing = httpx.post(http_server, json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, timeout=10)
    assert missing.status_code == 401


def test_in_process_resource_media_and_no_images() -> None:
    """An embedded resource as media; a server built without images returns none."""
    import base64
    import io

    from visagent.agent import Agent
    from visagent.config import load_config
    from visagent.mcp_server import build_server

    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (10, 10, 10)).save(buf, "PNG")
    resource = {"uri": "file:///picture.png", "mimeType": "image/png", "blob": base64.b64encode(buf.getvalue()).decode()}
    agent = Agent(load_config(profile="tiny"), planner="script:/nonexistent.yaml")
    server = build_server(agent, images=False, single_session=True)

    async def main() -> None:
        async with Client(server) as client:
            det = await client.call_tool("detect", {"image": resource, **DETECT})
            assert not det.is_error, det.content[0].text
            assert [c.type for c in det.content] == ["text"] and "[media: file:///picture.png = img_0]" in det.content[0].text

    asyncio.run(asyncio.wait_for(main(), 120))
