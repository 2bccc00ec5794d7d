"""Attacks on every boundary, each answered by a clear one-line error with nothing lost; the server
stays up and keeps answering after all of them.

Servers bind 127.0.0.1, are stopped by the tests, and every load is bounded in count and time.
"""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from tests.fakes import FAKE_TOOLS
from tests.test_server import free_port, start, stop
from visagent.agent import Agent
from visagent.errors import UsageError
from visagent.planners import FunctionPlanner, ScriptedPlanner, load_plan
from visagent.types import ErrorStep

REPO = Path(__file__).resolve().parents[1]
SECRET = "tok-9f3Qx7Lm2Zp8"  # the server token, planted in the config file
SECRETS = {SECRET: "server.token", "hfk-Wq81nNs0Yt": "models.caption.options.hf_token", "pw-Zr4Vb0Kd": "planner.base_url password"}


def png(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (200, 30, 30)).save(buf, "PNG")
    return buf.getvalue()


def cli(*args: str, cwd: Path = REPO, env: dict[str, str] | None = None, timeout: int = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "visagent.cli", *args], capture_output=True, text=True, cwd=cwd, env=env or os.environ.copy(), timeout=timeout)


# -- the server under attack -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("attacked")
    root, outside, traces = tmp / "root", tmp / "outside", tmp / "traces"
    for d in (root, outside, traces):
        d.mkdir()
    (root / "ok.png").write_bytes(png(40, 30))
    Image.new("RGB", (64, 48), "white").save(outside / "secret-page.png")
    plan = tmp / "plan.yaml"
    plan.write_text(f"- {{tool: search, args: {{query: page, gallery: {outside}}}}}\n- {{final: nothing found}}\n")
    config = {
        "planner": {"base_url": "http://user:pw-Zr4Vb0Kd@127.0.0.1:9/v1"},
        "models": {"caption": {"checkpoint": "tiny:blip", "options": {"hf_token": "hfk-Wq81nNs0Yt"}}},
        "server": {
            "token": SECRET, "allowed_roots": [str(root)], "trace_dir": str(traces), "max_files": 4,
            "max_total_pixels": 10_000, "max_pixels": 8_000, "max_question_chars": 200, "read_timeout_s": 2,
            "max_connections_per_client": 6, "max_request_bytes": 400_000,
        },
    }  # fmt: skip
    (tmp / "config.yaml").write_text(json.dumps(config))
    port = free_port()
    cmd = [sys.executable, "-m", "visagent.cli", "serve", "--profile", "tiny", "--config", str(tmp / "config.yaml"),
           "--planner", f"script:{plan}", "--port", str(port)]  # fmt: skip
    proc = start(cmd, port, tmp / "server.log")
    url = f"http://127.0.0.1:{port}"
    yield {"url": url, "port": port, "root": root, "outside": outside, "traces": traces, "log": tmp / "server.log", "proc": proc}
    stop(proc)


AUTH = {"Authorization": f"Bearer {SECRET}"}


def ask(target: dict[str, Any], **body: Any) -> httpx.Response:
    return httpx.post(f"{target['url']}/v1/ask", json=body, headers=AUTH, timeout=60)


def test_a_tool_argument_naming_a_folder_cannot_escape_the_roots(target: dict[str, Any]) -> None:
    r = ask(target, question="What does the page say?", media=[{"path": str(target["root"] / "ok.png")}])
    assert r.status_code == 200, r.text
    errors = [s for s in r.json()["trace"]["steps"] if s["type"] == "error"]
    assert errors[0]["code"] == "forbidden_path" and "outside the allowed roots" in errors[0]["message"]
    assert [m["id"] for m in r.json()["trace"]["meta"]["media"]] == ["img_0"]  # nothing from outside was registered
    # and as media, directly
    r = ask(target, question="q", media=[{"path": str(target["outside"] / "secret-page.png")}])
    assert r.status_code == 403 and "outside the allowed roots" in r.json()["detail"]


def test_request_budgets(target: dict[str, Any]) -> None:
    many = ask(target, question="q", media=[{"sample": "coffee"}] * 3000)
    assert many.status_code == 413 and "too many media: 3000 (server.max_files is 4)" in many.json()["detail"]
    long_json = ask(target, question="x" * 5000, media=[{"sample": "coffee"}])
    assert long_json.status_code == 400 and "server.max_question_chars" in long_json.json()["detail"]
    files = {"files": ("a.png", png(10, 10), "image/png")}
    long_form = httpx.post(f"{target['url']}/v1/ask", data={"question": "x" * 5000}, files=files, headers=AUTH, timeout=30)
    assert long_form.status_code == 400 and "server.max_question_chars" in long_form.json()["detail"]
    import base64

    four = [{"data": base64.b64encode(png(60, 50)).decode(), "filename": f"{i}.png"} for i in range(4)]
    total = ask(target, question="q", media=four)
    assert total.status_code == 413 and "server.max_total_pixels" in total.json()["detail"]
    big = ask(target, question="q", media=[{"data": base64.b64encode(png(100, 100)).decode(), "filename": "big.png"}])
    assert big.status_code == 413 and "big.png" in big.json()["detail"]


def test_slow_clients_are_cut_off_and_connections_capped(target: dict[str, Any]) -> None:
    """Trickled headers and bodies are closed at the read deadline (2 s here); a client's 7th
    connection is closed at once. Bounded: 6 sockets, about 3 s."""

    def slow(header_only: bool) -> socket.socket:
        s = socket.create_connection(("127.0.0.1", target["port"]), timeout=10)
        if header_only:
            s.sendall(b"POST /v1/ask HTTP/1.1\r\nHost: x\r\n")
        else:
            s.sendall(b"POST /v1/ask HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{")
        return s

    socks = [slow(header_only=i % 2 == 0) for i in range(6)]
    extra = socket.create_connection(("127.0.0.1", target["port"]), timeout=5)
    assert extra.recv(100) == b""  # over max_connections_per_client: closed at once
    extra.close()
    t0 = time.monotonic()
    closed = 0
    while time.monotonic() - t0 < 6 and closed < len(socks):
        for s in socks:
            if s.fileno() == -1:
                continue
            try:
                s.sendall(b"x")  # a byte now and then, never the whole request
                s.settimeout(0.2)
                data = s.recv(4096)
            except socket.timeout:
                continue
            except OSError:
                data = b""
            if data == b"" or data.startswith(b"HTTP/1.1 408"):
                s.close()
                closed += 1
        time.sleep(0.1)
    for s in socks:
        s.close()
    assert closed == len(socks)
    assert httpx.get(f"{target['url']}/healthz", timeout=5).status_code == 200


def test_files_and_names(target: dict[str, Any]) -> None:
    name = "a" * 300 + ".png"
    r = ask(target, question="q", media=[{"path": str(target["root"] / name)}])
    assert r.status_code == 400 and "file name too long" in r.json()["detail"]
    junk = httpx.post(f"{target['url']}/v1/ask", data={"question": "q"}, files={"files": ("junk.png", b"not an image", "image/png")}, headers=AUTH, timeout=30)
    detail = junk.json()["detail"]
    assert junk.status_code == 400 and "junk.png" in detail and "visagent-http-" not in detail


def test_a_client_going_away_logs_no_traceback(target: dict[str, Any]) -> None:
    with socket.create_connection(("127.0.0.1", target["port"]), timeout=5) as s:
        body = json.dumps({"question": "q", "media": [{"path": str(target["root"] / "ok.png")}]}).encode()
        head = f"POST /v1/ask HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {SECRET}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        s.sendall(head.encode() + body)
    time.sleep(1.5)
    assert httpx.get(f"{target['url']}/healthz", timeout=5).status_code == 200
    assert "Traceback" not in target["log"].read_text()


def test_no_secret_in_any_answer_trace_or_log(target: dict[str, Any]) -> None:
    for include_trace in (True, False):
        r = ask(target, question="q", media=[{"path": str(target["root"] / "ok.png")}], include_trace=include_trace)
        assert r.status_code == 200
        assert not [s for s in SECRETS if s in r.text], r.text[:500]
    bad = httpx.post(f"{target['url']}/v1/ask", json={"question": "q", "media": []}, headers={"Authorization": "Bearer wrong"}, timeout=10)
    assert bad.status_code == 401 and SECRET not in bad.text
    artifacts = [p.read_text(errors="replace") for p in target["traces"].rglob("*.jsonl")] + [target["log"].read_text()]
    assert len(artifacts) > 1
    for text in artifacts:
        assert not [s for s in SECRETS if s in text]
    meta = json.loads(next(target["traces"].rglob("*.jsonl")).read_text().splitlines()[0])
    assert meta["config"]["server"]["token"] == "***" and "pw-Zr4Vb0Kd" not in meta["config"]["planner"]["base_url"]


def test_whitespace_token_is_refused_at_start() -> None:
    proc = cli("serve", "--profile", "tiny", "--token", "   ", "--port", str(free_port()), timeout=60)
    assert proc.returncode == 2 and "token is empty" in proc.stderr and proc.stderr.strip().count("\n") == 0


# -- planner output ---------------------------------------------------------------------------------
HOSTILE = {
    "deep JSON": "{" + '"a": {' * 5000 + "}" * 5001,
    "huge integer": '{"tool": "echo", "args": {"text": "x", "sleep": ' + "9" * 5000 + "}}",
    "lone surrogate": '{"tool": "echo", "args": {"text": "bad \\ud800 text"}}',
    "quadratic search": "x{" * 200_000,
    "deep list": "[" * 100_000,
}


@pytest.mark.parametrize("kind", list(HOSTILE))
def test_hostile_planner_text_never_raises_out_of_ask(kind: str, tiny_config: Any) -> None:
    texts = iter([HOSTILE[kind], '{"tool": "echo", "args": {"text": "ok"}}', '{"final": "fine", "evidence": ["obs_1"]}'])
    agent = Agent(tiny_config, planner=FunctionPlanner(lambda state: next(texts)), tools=FAKE_TOOLS)  # text: parsed as JSON actions
    answer = agent.ask("q", ["sample:coins"])
    errors = [s for s in answer.trace.steps if isinstance(s, ErrorStep)]
    if kind == "lone surrogate":  # valid JSON: the text is cleaned, the call made, the answer given
        assert answer.ok and "\ufffd" in answer.trace.tool_steps()[0].observation
        answer.model_dump_json()  # and it serializes
    else:
        assert answer.ok and errors and errors[0].code == "planner_output", [e.message for e in errors]
        assert len(errors[0].message) < 400 and "\n" not in errors[0].message


def test_hostile_llava_plus_boxes(tiny_config: Any) -> None:
    from visagent.planners.llava_plus import parse_llava_plus
    from visagent.types import PlannerReply

    texts = iter(
        [
            '"thoughts🤔" x "actions🚀" [{"API_name": "sam", "API_params": {"boxes": {"x": 1}}}] "value👉" w',
            '"thoughts🤔" x "actions🚀" [{"API_name": "sam", "API_params": {"boxes": [[' + "9" * 400 + ', 0, 1, 1]]}}] "value👉" w',
            '"thoughts🤔" x "actions🚀" ' + "[" * 5000 + ' "value👉" w',
            '"thoughts🤔" done "actions🚀" [] "value👉" nothing',
        ]
    )
    def plan(state: Any) -> PlannerReply:
        text = next(texts)
        return PlannerReply(decision=parse_llava_plus(text, sizes={"img_0": (64, 64)}), raw=text)

    agent = Agent(tiny_config, planner=FunctionPlanner(plan), tools=FAKE_TOOLS)
    answer = agent.ask("hi there", ["sample:coins"])
    codes = [s.code for s in answer.trace.steps if isinstance(s, ErrorStep)]
    assert answer.ok and codes == ["planner_output"] * 3


class _BadEndpoint:
    """An OpenAI-compatible URL that answers 200 with HTML, then with ``message: null``."""

    def __init__(self) -> None:
        replies = [("text/html", b"<html><body>Welcome to nginx!</body></html>"),
                   ("application/json", json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": "m",
                    "choices": [{"index": 0, "message": None, "finish_reason": "stop"}]}).encode())]  # fmt: skip
        self.replies = replies

        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802
                self.rfile.read(int(self.headers["Content-Length"]))
                ctype, body = outer.replies[0] if len(outer.replies) == 1 else outer.replies.pop(0)
                self.send_response(200)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


def test_an_endpoint_answering_html_or_null_fails_the_run_cleanly(tiny_config: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("openai", reason="the openai extra is installed by make test")
    endpoint = _BadEndpoint()
    monkeypatch.setenv("VISAGENT_TEST_KEY", "sk-test-should-not-leak-42")
    try:
        planner = tiny_config.planner.model_copy(update={"kind": "openai", "base_url": endpoint.url, "model": "m", "api_key_env": "VISAGENT_TEST_KEY", "max_retries": 0})
        cfg = tiny_config.model_copy(update={"planner": planner})
        html = Agent(cfg, planner="openai", tools=FAKE_TOOLS).ask("q", ["sample:coins"])
        assert html.status == "failed" and "chat completion" in (html.error or "") and "planner.base_url" in (html.error or "")
        null = Agent(cfg, planner="openai", tools=FAKE_TOOLS).ask("q", ["sample:coins"], max_steps=2)
        msgs = [s.message for s in null.trace.steps if isinstance(s, ErrorStep)]
        assert null.status in ("failed", "max_steps") and msgs and all("without a message" in m for m in msgs)
        assert "sk-test-should-not-leak-42" not in html.model_dump_json() + null.model_dump_json()
    finally:
        endpoint.httpd.shutdown()
        endpoint.httpd.server_close()


# -- plan files -------------------------------------------------------------------------------------
BOMB = "a: &a [lol,lol,lol,lol,lol,lol,lol,lol,lol]\n" + "".join(
    f"{c}: &{c} [{', '.join(['*' + p] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi")
) + "plan: [{final: x}]\n"


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ("- " * 5000 + "{final: x}\n", "nested deeper than 32 levels"),
        (BOMB, "items"),
        ("# padding\n" * 1_300_000, "over the 1.0 MB limit"),
    ],
    ids=["deep", "alias-bomb", "12MB"],
)
def test_hostile_plan_files_are_one_line_exit_2(tmp_path: Path, content: str, needle: str) -> None:
    plan = tmp_path / "plan.yaml"
    plan.write_text(content)
    with pytest.raises(UsageError, match=needle.split(" (")[0]):
        load_plan(plan)
    proc = cli("ask", "sample:coffee", "q", "--profile", "tiny", "--planner", f"script:{plan}")
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1 and needle.split(" (")[0] in errors[0] and "Traceback" not in proc.stderr


# -- files ------------------------------------------------------------------------------------------
def test_write_failure_of_a_file_in_place_of_a_folder(tmp_path: Path) -> None:
    """A trace, image or report that cannot be written (here its folder is a file, which fails for
    any user, root included, as a read-only folder or a full disk would)."""
    plan = tmp_path / "plan.yaml"
    plan.write_text("- {final: a cup, evidence: []}\n")
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a folder should be")
    proc = cli("ask", "sample:coffee", "Hi?", "--profile", "tiny", "--planner", f"script:{plan}", "--trace", str(blocker / "t.jsonl"), "--show", str(blocker / "s.png"))
    assert proc.returncode == 3 and "a cup" in proc.stdout
    assert f"cannot write the trace {blocker / 't.jsonl'}" in proc.stderr and f"cannot write {blocker / 's.png'}" in proc.stderr


def test_over_long_file_name_on_the_command_line_is_exit_2() -> None:
    proc = cli("ask", "/tmp/" + "b" * 300 + ".png", "q", "--profile", "tiny", "--planner", "script:/nonexistent.yaml")
    assert proc.returncode == 2 and "file name too long" in proc.stderr


def test_resume_from_another_folder_does_not_run_twice(tmp_path: Path) -> None:
    suite = tmp_path / "suite.yaml"
    suite.write_text("".join(
        f"- name: s{i}\n  media: [sample:coffee]\n  question: Hi {i}?\n  plan: [{{final: hello, evidence: []}}]\n  expect: {{status: answered}}\n" for i in range(3)
    ))  # fmt: skip
    out = tmp_path / "results.jsonl"
    first = cli("run", str(suite), "--out", str(out), "--profile", "tiny", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    again = cli("run", str(suite), "--out", str(out), "--profile", "tiny", "--resume", cwd=elsewhere)
    assert again.returncode == 0, again.stderr
    assert len(out.read_text().splitlines()) == 3  # nothing ran twice
    suite.write_text(suite.read_text().replace("Hi 1?", "Hi one?"))  # an edited scenario runs again
    third = cli("run", str(suite), "--out", str(out), "--profile", "tiny", "--resume", cwd=elsewhere)
    assert third.returncode == 0 and len(out.read_text().splitlines()) == 4


def test_images_are_not_taken_for_videos(tmp_path: Path) -> None:
    from visagent.media import MediaStore, _looks_like_video, image_format

    # a GIF starts with "G", MPEG-TS's sync byte; one with that byte at 188 and 376 too (its palette) is still an image
    assert not _looks_like_video(b"GIF89a" + b"\x47" * 400)
    Image.new("RGB", (30, 20), (0x47, 0x47, 0x47)).save(tmp_path / "g.gif")
    store = MediaStore()
    assert store.add(str(tmp_path / "g.gif")).startswith("img_")
    avif = b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00avifmif1miaf" + b"\x00" * 64
    assert image_format(avif) == "AVIF" and image_format(b"\x00\x00\x00\x18ftypheic" + b"\x00" * 20) == "HEIF"
    (tmp_path / "broken.avif").write_bytes(avif)
    with pytest.raises(UsageError, match="unsupported image format|truncated or corrupt"):
        store.add(str(tmp_path / "broken.avif"))
    assert image_format(b"\x00\x00\x00\x18ftypisom") is None  # an mp4 stays a video


def test_in_memory_inputs_leave_no_temporary_files(tiny_config: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    video = (REPO / "scenarios" / "media" / "moving_square.mp4").read_bytes()
    agent = Agent(tiny_config, planner=ScriptedPlanner([{"final": "x"}]), tools=FAKE_TOOLS)
    for data in [png(20, 20)] * 20 + [video] * 5:
        agent.ask("hi", [data])
    import gc

    gc.collect()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("visagent-")] == []


# -- replay -----------------------------------------------------------------------------------------
def _recorded(tiny_config: Any, tmp_path: Path, media: Any, name: str = "t") -> Path:
    trace = tmp_path / f"{name}.jsonl"
    Agent(tiny_config, planner=ScriptedPlanner([{"tool": "echo", "args": {"text": "a"}}, {"final": "a", "evidence": ["obs_1"]}]), tools=FAKE_TOOLS).ask(
        "q", [media], trace_path=trace
    )
    return trace


def _edit_meta(trace: Path, **changes: Any) -> None:
    lines = trace.read_text().splitlines()
    meta = json.loads(lines[0])
    for key, value in changes.items():
        meta["media"][0][key] = value
    trace.write_text("\n".join([json.dumps(meta), *lines[1:]]) + "\n")


def test_replay_refuses_an_unchecked_or_escaping_input(tiny_config: Any, tmp_path: Path) -> None:
    from visagent.replay import replay

    trace = _recorded(tiny_config, tmp_path, "sample:coins")
    _edit_meta(trace, sha256="")
    with pytest.raises(UsageError, match="records no sha256"):
        replay(trace, tools=FAKE_TOOLS)
    trace = _recorded(tiny_config, tmp_path, png(8, 8), "copy")  # an in-memory input: a saved copy
    _edit_meta(trace, saved_copy="../../../etc/passwd")
    with pytest.raises(UsageError, match="outside the trace's media folder"):
        replay(trace, tools=FAKE_TOOLS)


def test_replanning_uses_the_current_checkpoints(tiny_config: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from visagent.replay import replay

    trace = _recorded(tiny_config, tmp_path, "sample:coins")
    lines = trace.read_text().splitlines()
    meta = json.loads(lines[0])
    meta["config"]["models"]["caption"]["checkpoint"] = "/attacker/controlled/checkpoint"
    trace.write_text("\n".join([json.dumps(meta), *lines[1:]]) + "\n")
    plan = tmp_path / "p.yaml"
    plan.write_text("- {tool: echo, args: {text: a}}\n- {final: a, evidence: [obs_1]}\n")
    monkeypatch.setenv("VISAGENT_PROFILE", "tiny")
    result = replay(trace, planner=f"script:{plan}", tools=FAKE_TOOLS)
    assert result.same and result.answer.trace.meta.config["models"]["caption"]["checkpoint"] == "tiny:blip"
    trusted = replay(trace, planner=f"script:{plan}", tools=FAKE_TOOLS, trust_trace_config=True)
    assert trusted.answer.trace.meta.config["models"]["caption"]["checkpoint"] == "/attacker/controlled/checkpoint"


# -- secrets, end to end ----------------------------------------------------------------------------
def test_a_planted_secret_appears_in_no_artifact(tmp_path: Path) -> None:
    """Secrets in every place a user could put one; every file, stream and answer of a CLI run,
    a scenario run and a Python run is searched for them."""
    config = tmp_path / "config.yaml"
    config.write_text(json.dumps({
        "planner": {"base_url": "https://bob:pw-Zr4Vb0Kd@llm.example/v1"},
        "models": {"caption": {"checkpoint": "tiny:blip", "options": {"hf_token": "hfk-Wq81nNs0Yt"}}},
        "server": {"token": SECRET},
    }))  # fmt: skip
    plan = tmp_path / "plan.yaml"
    plan.write_text("- {tool: caption, args: {image: img_0}}\n- {final: a thing, evidence: [obs_1]}\n")
    env = {**os.environ, "VISAGENT_TOKEN": "envtok-55Hh1", "OPENAI_API_KEY": "sk-live-0Aa9"}
    secrets = [*SECRETS, "envtok-55Hh1", "sk-live-0Aa9"]
    ask_cli = cli("ask", "sample:coffee", "What is this?", "--profile", "tiny", "--config", str(config), "--planner", f"script:{plan}",
                  "--json", "--trace", str(tmp_path / "t.jsonl"), "--report", str(tmp_path / "r.html"), "-v", env=env)  # fmt: skip
    assert ask_cli.returncode == 0, ask_cli.stderr
    suite = tmp_path / "suite.yaml"
    suite.write_text("- name: s\n  media: [sample:coffee]\n  question: What?\n  plan: [{tool: caption, args: {image: img_0}}, {final: x, evidence: [obs_1]}]\n")
    run = cli("run", str(suite), "--profile", "tiny", "--config", str(config), "--out", str(tmp_path / "res.jsonl"), "--junit", str(tmp_path / "j.xml"), env=env)
    assert run.returncode == 0, run.stderr
    texts = [ask_cli.stdout, ask_cli.stderr, run.stdout, run.stderr] + [p.read_text(errors="replace") for p in tmp_path.rglob("*") if p.is_file() and p != config]
    leaked = {s for s in secrets for t in texts if s in t}
    assert not leaked, leaked
    trace_meta = json.loads((tmp_path / "t.jsonl").read_text().splitlines()[0])
    assert trace_meta["config"]["server"]["token"] == "***" and trace_meta["config"]["models"]["caption"]["options"]["hf_token"] == "***"
