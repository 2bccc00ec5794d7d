"""Client mode: ``visagent ask`` / ``chat`` / ``run`` answered by a real ``visagent serve`` process
on 127.0.0.1 give what the in-process run gives (output, trace, files, exit codes); sessions kept
by the server; ``serve --detach`` / ``stop``."""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.test_server import free_port, start, stop
from visagent import client
from visagent.cli import main
from visagent.errors import UsageError
from visagent.http_sessions import NEW, SessionProblem, SessionStore

TOKEN = "client-token"
PLAN = [
    {"tool": "detect", "args": {"image": "img_0", "labels": ["cup"], "box_threshold": 0.0, "text_threshold": 0.0}},
    {"final": "There is 1 cup.", "evidence": ["det_1_0"]},
]
TURNS = [PLAN, [{"tool": "segment", "args": {"image": "img_0", "boxes": ["det_1_0"]}}, {"final": "Segmented.", "evidence": ["mask_2_0", "det_1_0"]}]]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("client-server")
    (tmp / "config.yaml").write_text(json.dumps({"server": {"max_steps": 6}}))
    port = free_port()
    cmd = [sys.executable, "-m", "visagent.cli", "serve", "--profile", "tiny", "--config", str(tmp / "config.yaml"),
           "--port", str(port), "--token", TOKEN]  # fmt: skip
    proc = start(cmd, port, tmp / "server.log")
    yield f"http://127.0.0.1:{port}"
    stop(proc)
    assert "Traceback" not in (tmp / "server.log").read_text()


@pytest.fixture
def remote_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VISAGENT_LOCAL", raising=False)
    monkeypatch.delenv("VISAGENT_SERVER", raising=False)
    monkeypatch.setenv("VISAGENT_TOKEN", TOKEN)


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    got = capsys.readouterr()
    return code, got.out, got.err


def write_plan(path: Path, plan: Any) -> str:
    path.write_text(yaml.safe_dump(plan))
    return f"script:{path}"


def test_ask_through_a_server_gives_what_a_local_run_gives(
    server: str, remote_env: None, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    plan = write_plan(tmp_path / "plan.yaml", PLAN)
    base = ["ask", "sample:coffee", "How many cups?", "--profile", "tiny", "--planner", plan]
    code, local_out, _ = cli(capsys, *base, "--local", "--json", "--trace", str(tmp_path / "local.jsonl"))
    assert code == 0
    code, remote_out, _ = cli(
        capsys, *base, "--server", server, "--json", "--trace", str(tmp_path / "remote.jsonl"),
        "--show", str(tmp_path / "remote.png"), "--report", str(tmp_path / "remote.html"),
    )  # fmt: skip
    assert code == 0
    local, remote = json.loads(local_out), json.loads(remote_out)
    assert remote["answer"] == local["answer"] == "There is 1 cup."
    assert [e["id"] for e in remote["evidence"]] == ["det_1_0"] and remote["evidence"] == local["evidence"]
    assert [s["type"] for s in remote["trace"]["steps"]] == [s["type"] for s in local["trace"]["steps"]]
    assert remote["trace"]["meta"]["media"][0]["source"] == "sample:coffee"  # the user's name, not the upload's
    assert "session" not in remote
    # the files: a drawing, a report, and a trace written line by line that replays
    assert (tmp_path / "remote.png").stat().st_size > 1000
    assert "There is 1 cup." in (tmp_path / "remote.html").read_text()
    kinds = [json.loads(line)["type"] for line in (tmp_path / "remote.jsonl").read_text().splitlines()]
    assert kinds[0] == "meta" and kinds[-1] == "answer" and kinds.count("tool") == 1
    monkeypatch.chdir(tmp_path)
    code, out, _ = cli(capsys, "replay", str(tmp_path / "remote.jsonl"))
    assert code == 0 and "same answer" in out
    # the human output is the same, up to the timing
    code, text, _ = cli(capsys, *base, "--server", server)
    assert code == 0 and text.splitlines()[:3] == ["There is 1 cup.", "evidence:", f"  {_describe(local['evidence'][0])}"]


def _describe(evidence: dict[str, Any]) -> str:
    from visagent.types import Evidence

    return Evidence.model_validate(evidence).describe()


def test_a_local_file_is_uploaded_and_named_as_given(server: str, remote_env: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from PIL import Image

    Image.new("RGB", (64, 48), (200, 30, 30)).save(tmp_path / "red.png")
    plan = write_plan(tmp_path / "plan.yaml", PLAN)
    code, out, _ = cli(capsys, "ask", str(tmp_path / "red.png"), "What?", "--planner", plan, "--server", server, "--json",
                       "--trace", str(tmp_path / "t.jsonl"))  # fmt: skip
    assert code == 0
    assert json.loads(out)["trace"]["meta"]["media"][0]["source"] == str(tmp_path / "red.png")
    meta = json.loads((tmp_path / "t.jsonl").read_text().splitlines()[0])
    assert meta["media"][0]["source"] == str(tmp_path / "red.png") and meta["media"][0]["saved_copy"] is None


def test_bad_input_gives_the_same_errors_and_exit_codes(
    server: str, remote_env: None, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    plan = write_plan(tmp_path / "plan.yaml", PLAN)
    missing = str(tmp_path / "missing.png")
    local = cli(capsys, "ask", missing, "q", "--profile", "tiny", "--planner", plan, "--local")
    remote = cli(capsys, "ask", missing, "q", "--profile", "tiny", "--planner", plan, "--server", server)
    assert local[0] == remote[0] == 2 and local[2] == remote[2] and "missing.png" in remote[2]
    # the server's own limits: a 400 is bad input
    code, _, err = cli(capsys, "ask", "sample:coffee", "q", "--planner", plan, "--server", server, "--max-steps", "50")
    assert code == 2 and "max_steps must be between 1 and 6" in err and "Traceback" not in err
    # a wrong token
    monkeypatch.setenv("VISAGENT_TOKEN", "nottheclienttoken")
    code, _, err = cli(capsys, "ask", "sample:coffee", "q", "--planner", plan, "--server", server)
    assert code == 2 and "wants a token" in err and "VISAGENT_TOKEN" in err and "nottheclienttoken" not in err
    # a plan the server cannot follow: the run fails as it would here
    monkeypatch.setenv("VISAGENT_TOKEN", TOKEN)
    bad = write_plan(tmp_path / "bad.yaml", [{"tool": "detect", "args": {"image": "img_0", "labels": ["cup"]}}])
    code, _, err = cli(capsys, "ask", "sample:coffee", "q", "--planner", bad, "--server", server)
    local = cli(capsys, "ask", "sample:coffee", "q", "--planner", bad, "--profile", "tiny", "--local")
    assert code == local[0] == 1 and "ran out" in err and err.splitlines()[-1] == local[2].splitlines()[-1]


def test_a_named_server_that_cannot_be_used_is_a_one_line_error(
    server: str, remote_env: None, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    code, _, err = cli(capsys, "ask", "sample:coffee", "q", "--server", closed)
    assert code == 2 and err.startswith(f"error: no visagent server at {closed}") and "--local" in err and len(err.splitlines()) == 1
    code, _, err = cli(capsys, "ask", "sample:coffee", "q", "--server", "localhost:8000")
    assert code == 2 and "needs an http(s) URL" in err
    code, _, err = cli(capsys, "ask", "sample:coffee", "q", "--profile", "default", "--server", server)
    assert code == 2 and "runs profile 'tiny', not 'default'" in err
    code, _, err = cli(capsys, "ask", "sample:coffee", "q", "--planner", "openai", "--server", server)
    assert code == 2 and "runs the 'llava' planner, not 'openai'" in err
    monkeypatch.setenv("VISAGENT_SERVER", f"http://127.0.0.1:{free_port()}")  # named by the environment: same error
    code, _, err = cli(capsys, "ask", "sample:coffee", "q")
    assert code == 2 and "(VISAGENT_SERVER)" in err


def test_the_default_address_is_used_only_by_a_visagent_server_that_fits(server: str, remote_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(client, "DEFAULT_URL", server)
    found = client.find_server()
    assert found is not None and found.url == server and found.profile == "tiny" and found.token == TOKEN
    assert TOKEN not in repr(found)
    assert client.find_server(profile="tiny", planner="script:x.yaml") is not None  # a plan travels with the request
    assert client.find_server(profile="default") is None  # another profile: run here
    assert client.find_server(planner="openai") is None
    assert client.find_server(local=True) is None
    assert client.find_server(profile="default", environ={"VISAGENT_SERVER": server}) is None  # runs here instead
    assert client.find_server(environ={"VISAGENT_SERVER": server}) is not None
    assert client.find_server(environ={"VISAGENT_LOCAL": "1"}) is None
    with pytest.raises(UsageError, match="runs profile 'tiny'"):
        client.find_server(server, profile="default")
    # something else listening there (not a visagent server) is left alone
    other = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=other.serve_forever, daemon=True).start()
    try:
        monkeypatch.setattr(client, "DEFAULT_URL", f"http://127.0.0.1:{other.server_address[1]}")
        assert client.find_server() is None
        with pytest.raises(UsageError, match="not a visagent server"):
            client.find_server(f"http://127.0.0.1:{other.server_address[1]}")
    finally:
        other.shutdown()
        other.server_close()
    monkeypatch.setattr(client, "DEFAULT_URL", f"http://127.0.0.1:{free_port()}")
    assert client.find_server() is None  # nothing there: in-process


def test_chat_keeps_the_servers_session(
    server: str, remote_env: None, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    plan = write_plan(tmp_path / "turns.yaml", TURNS)
    lines = iter(["How many cups?", "segment det_1_0", "/ids", "/quit"])
    monkeypatch.setattr("builtins.input", lambda *_: next(lines))
    code, out, err = cli(capsys, "chat", "sample:coffee", "--server", server, "--planner", plan, "--trace-dir", str(tmp_path / "turns"))
    assert code == 0, err
    assert "There is 1 cup." in out and "Segmented." in out and "mask_2_0 (segment, img_0)" in out
    assert "det_1_0" in out.splitlines()[-1] and "mask_2_0" in out.splitlines()[-1]  # /ids
    turn2 = [json.loads(line) for line in (tmp_path / "turns" / "turn-2.jsonl").read_text().splitlines()]
    assert turn2[0]["session"]["calls"] == 1 and turn2[0]["media"][0]["source"] == "sample:coffee"
    code, out, _ = cli(capsys, "replay", str(tmp_path / "turns" / "turn-2.jsonl"))
    assert code == 0 and "same answer" in out


def test_scenarios_run_through_the_server(server: str, remote_env: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(capsys, "run", "scenarios/machinery.yaml", "--profile", "tiny", "--server", server, "--out", str(tmp_path / "r.jsonl"))
    results = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert code == 0, out + err
    assert len(results) >= 5 and all(r["passed"] for r in results)
    conversation = [r for r in results if len(r["answer"]["trace"]["meta"]["turns"]) > 1]
    assert conversation and conversation[0]["answer"]["trace"]["meta"]["session"] is not None  # turns share the session


def test_http_sessions(server: str) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    body = {"question": "q", "media": [{"sample": "coffee"}], "plan": PLAN, "session": "new"}
    first = httpx.post(f"{server}/v1/ask", json=body, headers=auth, timeout=120).json()
    assert first["status"] == "answered" and first["session"]
    follow = {"question": "again", "plan": TURNS[1], "session": first["session"]}
    second = httpx.post(f"{server}/v1/ask", json=follow, headers=auth, timeout=120).json()
    assert second["status"] == "answered" and [e["id"] for e in second["evidence"]] == ["mask_2_0", "det_1_0"]
    assert httpx.delete(f"{server}/v1/sessions/{first['session']}", headers=auth).status_code == 200
    gone = httpx.post(f"{server}/v1/ask", json=follow, headers=auth, timeout=60)
    assert gone.status_code == 404 and "unknown or expired session" in gone.json()["detail"]
    # a refused request leaves no upload folder behind
    import tempfile

    before = set(Path(tempfile.gettempdir()).glob("visagent-http-*"))
    refused = httpx.post(f"{server}/v1/ask", files={"files": ("a.png", _png())}, data={"question": "q", "session": "nope"},
                         headers=auth, timeout=60)  # fmt: skip
    assert refused.status_code == 404 and set(Path(tempfile.gettempdir()).glob("visagent-http-*")) <= before
    no_media = httpx.post(f"{server}/v1/ask", json={"question": "q", "plan": PLAN}, headers=auth, timeout=60)
    assert no_media.status_code == 400 and "at least one media" in no_media.json()["detail"]
    bad_plan = httpx.post(f"{server}/v1/ask", json={**body, "plan": [{"nope": 1}]}, headers=auth, timeout=60)
    assert bad_plan.status_code == 400 and "unknown keys" in bad_plan.json()["detail"]


def _png() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (32, 24), (10, 200, 10)).save(buf, format="PNG")
    return buf.getvalue()


def test_session_store_bounds(tmp_path: Path) -> None:
    now = [0.0]

    class Fake:
        roots: list[Path] = []

    store = SessionStore(max_sessions=2, ttl_s=10, clock=lambda: now[0])
    folders = []
    for i in range(3):
        folders.append(tmp_path / f"f{i}")
        folders[-1].mkdir()
    a = store.acquire(NEW, Fake, folders[0])
    with pytest.raises(SessionProblem) as busy:
        store.acquire(a.id, Fake, folders[1])
    assert busy.value.status == 409
    store.release(a)
    now[0] = 1
    b = store.acquire(NEW, Fake, folders[1])
    store.release(b)
    now[0] = 2
    c = store.acquire(NEW, Fake, folders[2])  # over the limit: the least recently used (a) goes, with its folder
    assert len(store) == 2 and not folders[0].exists() and folders[1].exists()
    with pytest.raises(SessionProblem) as unknown:
        store.acquire(a.id, Fake, folders[0])
    assert unknown.value.status == 404
    store.release(c)
    now[0] = 20  # idle past the ttl: both expire
    store.acquire(NEW, Fake, tmp_path)
    assert len(store) == 1 and not folders[1].exists() and not folders[2].exists()


def test_serve_detach_and_stop(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "VISAGENT_CACHE_DIR": str(tmp_path / "cache")}
    env.pop("VISAGENT_TOKEN", None)
    run = [sys.executable, "-m", "visagent.cli"]
    started = subprocess.run([*run, "serve", "--detach", "--profile", "tiny", "--port", str(port)], capture_output=True, text=True,
                             env=env, timeout=120)  # fmt: skip
    pidfile = tmp_path / "cache" / "serve" / f"{port}.pid"
    try:
        assert started.returncode == 0, started.stderr
        assert f"http://127.0.0.1:{port}" in started.stderr and "visagent stop" in started.stderr
        pid = int(pidfile.read_text())
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).json()["service"] == "visagent"
        again = subprocess.run([*run, "serve", "--detach", "--profile", "tiny", "--port", str(port)], capture_output=True, text=True,
                               env=env, timeout=60)  # fmt: skip
        assert again.returncode == 2 and "already" in again.stderr
    finally:
        stopped = subprocess.run([*run, "stop", "--port", str(port)], capture_output=True, text=True, env=env, timeout=60)
    assert stopped.returncode == 0 and f"pid {pid}" in stopped.stdout
    deadline = time.monotonic() + 10
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not Path(f"/proc/{pid}").exists() and not pidfile.exists()
    none = subprocess.run([*run, "stop"], capture_output=True, text=True, env=env, timeout=60)
    assert none.returncode == 2 and "no detached visagent server" in none.stderr
