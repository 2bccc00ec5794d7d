"""The web page (``visagent ui``, ``/ui`` on ``visagent serve --ui``).

The page test drives Debian's ``chromium`` with Playwright (it never downloads a browser) against
``visagent ui`` started as a subprocess on 127.0.0.1 with the tiny profile and a scripted plan
holding one plan per turn: upload, ask, watch the steps and the answer, highlight an evidence
id, ask a follow-up citing an earlier id, download the turn's trace and report, upload a bad
file. Without chromium it fails, naming ``make browser``. Screenshots go to the test's temporary
folder (``VISAGENT_UPDATE_DOCS=1`` also refreshes the README's ``docs/ui.png``).
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml
from PIL import Image

from tests.test_report import CHROMIUM, CHROMIUM_ARGS
from tests.test_server import free_port, start, stop
from visagent.errors import UsageError

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
TOKEN = "page-s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
DETECT = {"image": "img_0", "labels": ["cup"], "box_threshold": 0.0, "text_threshold": 0.0}
#: one plan per turn: find the cups, segment the first one found in turn 1, look again
PLANS = [
    [{"tool": "detect", "args": DETECT, "thought": "look for cups"}, {"final": "I found cups.", "evidence": ["det_1_0"]}],
    [
        {"tool": "segment", "args": {"image": "img_0", "boxes": ["det_1_0"]}, "thought": "outline det_1_0"},
        {"final": "Outlined the first cup.", "evidence": ["mask_2_0", "det_1_0"]},
    ],
    [{"tool": "detect", "args": DETECT}, {"final": "Still cups.", "evidence": ["det_3_0"]}],
]
BAD_FILE_ERROR = "notes.png: not an image or video (unrecognized content)"


def chromium() -> str:
    if Path(CHROMIUM).is_file() or shutil.which(CHROMIUM):
        return CHROMIUM
    pytest.fail(f"the web page test needs Debian's chromium at {CHROMIUM}: run `make browser` (or apt-get install -y chromium)")


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "VISAGENT_TOKEN"} | {"HF_HUB_OFFLINE": "1"}


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("ui-media")
    import skimage.data

    from tests.helpers import write_video

    Image.fromarray(skimage.data.coffee()).save(folder / "coffee.png")
    write_video(folder / "clip.mp4", [0.0, 0.5, 1.0])
    (folder / "notes.png").write_text("just some notes, not a picture\n")
    return folder


@pytest.fixture(scope="module")
def page_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``visagent ui`` on 127.0.0.1 (tiny profile, scripted plans, a token); stopped afterwards."""
    tmp = tmp_path_factory.mktemp("ui-server")
    (tmp / "plans.yaml").write_text(yaml.safe_dump(PLANS))
    port = free_port()
    cmd = [sys.executable, "-m", "visagent.cli", "ui", "--profile", "tiny", "--planner", f"script:{tmp / 'plans.yaml'}",
           "--port", str(port), "--token", TOKEN]  # fmt: skip
    proc = start(cmd, port, tmp / "ui.log", env=_env(), path="/", headers=AUTH, wait_s=240)
    yield f"http://127.0.0.1:{port}"
    stop(proc)
    log = (tmp / "ui.log").read_text()
    assert "Traceback" not in log, log[-3000:]


def test_page_needs_the_token(page_url: str) -> None:
    for path in ("/", "/config", "/gradio_api/info", "/gradio_api/upload"):
        r = httpx.get(page_url + path)
        assert r.status_code == 401 and r.json()["detail"].startswith("missing or wrong token"), (path, r.text)
        assert "\n" not in r.json()["detail"]
    assert httpx.get(page_url + "/", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert httpx.get(page_url + "/?token=nope").status_code == 401
    assert httpx.get(page_url + "/", cookies={"visagent_token": "nope"}).status_code == 401
    r = httpx.get(page_url + "/?token=" + TOKEN + "&lang=en")
    assert r.status_code == 303 and r.headers["location"] == "/?lang=en"  # the token leaves the address
    cookie = r.headers["set-cookie"]
    assert cookie.startswith(f"visagent_token={TOKEN};") and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert httpx.get(page_url + "/config", cookies={"visagent_token": TOKEN}).status_code == 200
    assert "<html" in httpx.get(page_url + "/", headers=AUTH).text


def test_ui_refuses_a_public_host_without_a_token() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "visagent.cli", "ui", "--host", "0.0.0.0", "--profile", "tiny"],
        capture_output=True, text=True, timeout=120, env=_env(), cwd=REPO,
    )  # fmt: skip
    assert r.returncode == 2
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert lines == ["error: refusing to listen on 0.0.0.0 without a token: pass --token (or set VISAGENT_TOKEN), or use --host 127.0.0.1"]


def _brightness(data: bytes) -> float:
    return float(np.asarray(Image.open(io.BytesIO(data)).convert("L"), dtype=np.float64).mean())


def test_page_in_headless_chromium(page_url: str, media: Path, tmp_path: Path) -> None:
    exe = chromium()
    from playwright.sync_api import expect, sync_playwright

    wait = 180_000  # ms: the first question builds and loads the tiny models
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS, headless=True)
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 1150})
            page = context.new_page()
            requests: list[str] = []
            page.on("request", lambda r: requests.append(r.url))
            page.goto(f"{page_url}/?token={TOKEN}")
            ask = page.locator("#ask textarea")
            expect(ask).to_be_visible(timeout=wait)
            expect(page.locator("#tiny-note")).to_contain_text("profile 'tiny'")
            page.locator("#settings").get_by_text("Settings").click()
            expect(page.locator("#max-steps input[type=number]")).to_have_value("8")

            # turn 1: upload an image and a video at once and ask; each step shows up, then the answer
            # and the media with the evidence drawn
            page.locator("#ask input[type=file]").set_input_files([str(media / "coffee.png"), str(media / "clip.mp4")])
            expect(page.locator("#ask .thumbnail-item")).to_have_count(2, timeout=wait)
            ask.fill("How many cups are there?")
            ask.press("Enter")
            chat = page.locator("#chat")
            expect(chat).to_contain_text("added coffee.png = img_0, clip.mp4 = vid_0", timeout=wait)
            expect(chat).to_contain_text("I found cups.", timeout=wait)
            for line in ("plan detect", "tool detect:", "plan final: I found cups."):
                expect(chat).to_contain_text(line)
            evidence = page.locator("#evidence label")
            expect(evidence).to_have_count(1, timeout=wait)
            expect(evidence.first).to_contain_text("det_1_0 cup")
            shown = page.locator("#gallery img[alt='img_0  coffee.png']").first
            expect(shown).to_be_visible(timeout=wait)
            before = shown.get_attribute("src") or ""
            drawn = page.request.get(before).body()
            assert Image.open(io.BytesIO(drawn)).size == (600, 400)
            expect(page.locator("#gallery img[alt='vid_0  clip.mp4']").first).to_be_attached()  # the video by its first frame
            page.screenshot(path=str(tmp_path / "ui-answer.png"))

            # select the evidence id: the page re-draws the image with its region highlighted
            evidence.first.click()
            detail = page.locator("#evidence-detail")
            expect(detail).to_contain_text("det_1_0 (detect, img_0) 'cup'", timeout=wait)
            expect(shown).not_to_have_attribute("src", before, timeout=wait)
            lit = page.request.get(shown.get_attribute("src") or "").body()
            assert _brightness(lit) < 0.6 * _brightness(drawn)  # everything but the region is dimmed
            page.screenshot(path=str(tmp_path / "ui-highlight.png"))

            # turn 2 in the same session: cite turn 1's id
            ask.fill("Now segment det_1_0")
            ask.press("Enter")
            expect(chat).to_contain_text("Outlined the first cup.", timeout=wait)
            expect(chat).to_contain_text("tool segment:")
            expect(evidence).to_have_count(2, timeout=wait)
            expect(page.locator("#evidence")).to_contain_text("mask_2_0")
            expect(page.locator("#evidence")).to_contain_text("det_1_0")
            page.screenshot(path=str(tmp_path / "ui-follow-up.png"))

            # each turn's trace (JSONL) and report (HTML) can be downloaded
            links = page.locator("#downloads a[download]")
            expect(links).to_have_count(4, timeout=wait)
            names = [links.nth(i).get_attribute("download") for i in range(4)]
            assert names == ["turn-1-trace.jsonl", "turn-1-report.html", "turn-2-trace.jsonl", "turn-2-report.html"]
            trace = page.request.get(links.nth(2).get_attribute("href") or "").text()
            records = [json.loads(line) for line in trace.splitlines() if line.strip()]
            assert records and any("Now segment det_1_0" in json.dumps(r) for r in records)
            report = page.request.get(links.nth(3).get_attribute("href") or "").text()
            assert "Outlined the first cup." in report and "mask_2_0" in report

            # a bad file: the server's one-line reason, in the page, and no run
            page.locator("#ask input[type=file]").set_input_files([str(media / "notes.png")])
            expect(page.locator("#ask .thumbnail-item")).to_have_count(1, timeout=wait)
            ask.fill("What is this?")
            ask.press("Enter")
            errors = page.locator("#errors")
            expect(errors).to_have_text(f"error: {BAD_FILE_ERROR}", timeout=wait)
            assert "Traceback" not in page.locator("body").inner_text()
            expect(ask).to_have_value("What is this?")  # the question stays, to ask again with another file
            page.screenshot(path=str(tmp_path / "ui-bad-file.png"))

            # settings: max steps applies to the next question; a new profile starts a new session
            page.locator("#max-steps input[type=range]").press("Home")  # the slider's lowest value
            expect(page.locator("#max-steps input[type=number]")).to_have_value("1")  # the page holds the new value
            ask.fill("Count the cups again")
            ask.press("Enter")
            expect(chat).to_contain_text("no answer (max_steps): no final answer within 1 steps", timeout=wait)
            expect(errors).to_contain_text("no final answer within 1 steps")
            page.locator("#profile input").click()
            page.get_by_role("option", name="default").click()
            expect(chat).to_have_text(re.compile(r"profile default: a new session"), timeout=wait)
            expect(page.locator("#tiny-note")).to_be_hidden()
            expect(chat).not_to_contain_text("I found cups.")
            expect(evidence).to_have_count(0)
            expect(links).to_have_count(0)
            page.locator("#profile input").click()
            page.get_by_role("option", name="tiny").click()
            expect(page.locator("#tiny-note")).to_be_visible(timeout=wait)

            assert all(u.startswith((page_url, "data:", "blob:")) for u in requests), [u for u in requests if not u.startswith(page_url)]
            for name in ("ui-answer", "ui-highlight", "ui-follow-up", "ui-bad-file"):
                assert (tmp_path / f"{name}.png").stat().st_size > 20_000
            if os.environ.get("VISAGENT_UPDATE_DOCS"):  # refresh the README's screenshot on request
                shutil.copyfile(tmp_path / "ui-highlight.png", DOCS / "ui.png")
        finally:
            browser.close()


@pytest.fixture
def served(tiny_config: Any, shared_pool: Any) -> Iterator[Any]:
    """``create_app`` with ``server.ui: true`` and a token, in this process."""
    from fastapi.testclient import TestClient

    from visagent.agent import Agent
    from visagent.planners import ScriptedPlanner
    from visagent.server import create_app

    agent = Agent(tiny_config, planner=ScriptedPlanner(PLANS), pool=shared_pool)
    app = create_app(agent, {"ui": True, "token": TOKEN, "max_files": 2})
    with TestClient(app) as client:
        yield client


def test_mounted_under_serve_with_the_same_token_and_errors(served: Any, media: Path) -> None:
    assert served.get("/ui/").status_code == 401
    assert served.get("/ui/config").status_code == 401
    r = served.get(f"/ui?token={TOKEN}", follow_redirects=False)
    assert r.status_code == 303 and "Path=/ui;" in r.headers["set-cookie"]
    assert served.get("/ui/", headers=AUTH).status_code == 200
    served.cookies.set("visagent_token", TOKEN)
    assert served.get("/ui/config").status_code == 200
    assert served.get("/v1/tools").status_code == 401  # the page's cookie is not the API's bearer token
    served.cookies.clear()

    # the page checks media as the API does: the same one-line errors
    files = [("files", ("notes.png", (media / "notes.png").read_bytes(), "image/png"))]
    r = served.post("/v1/ask", data={"question": "what is it?"}, files=files, headers=AUTH)
    assert r.status_code == 400 and r.json()["detail"] == BAD_FILE_ERROR
    page = served.app.state.visagent_ui
    visit = page.visit()
    try:
        assert page.add_media(visit, [str(media / "notes.png")]) == ([], [BAD_FILE_ERROR])
        assert page.add_media(visit, [str(media / "coffee.png")], ["coins"]) == (["coffee.png = img_0", "sample:coins = img_1"], [])
        r = served.post("/v1/ask", json={"question": "q", "media": [{"sample": "coins"}] * 3}, headers=AUTH)
        assert page.add_media(visit, samples=["cat"]) == ([], ["too many media: 3 (server.max_files is 2)"])
        assert r.json()["detail"] == "too many media: 3 (server.max_files is 2)"

        # two turns of one session through the page's calls, the second citing the first's id
        for k, (question, expected) in enumerate((("cups?", ["det_1_0"]), ("segment det_1_0", ["mask_2_0", "det_1_0"])), 1):
            run = page.start(visit, question)
            steps = list(page.follow(run))
            turn = page.finish(visit, run)
            assert turn.answer.ok and [e.id for e in turn.answer.evidence] == expected, turn.answer.error
            assert [p.name for p in turn.files] == [f"turn-{k}-trace.jsonl", f"turn-{k}-report.html"]
            assert all(p.is_file() for p in turn.files) and steps[-1].type == "final"
        tiles, selected = page.gallery(visit, "det_1_0")
        assert [caption for _, caption in tiles] == ["img_0  coffee.png", "img_1  sample:coins"] and selected == 0
        with pytest.raises(UsageError, match="max_steps must be between 1 and"):
            page.start(visit, "again", max_steps=10_000)
    finally:
        visit.close()
    assert not visit.folder.exists()


def test_plan_file_with_one_plan_per_turn(tmp_path: Path, make_agent: Any) -> None:
    from tests.fakes import FAKE_TOOLS
    from visagent.planners import ScriptedPlanner, load_plan

    plans = [
        [{"tool": "fake_find", "args": {"image": "img_0", "label": "cup", "n": 2}}, {"final": "two", "evidence": ["det_1_0", "det_1_1"]}],
        [{"tool": "echo", "args": {"text": "det_1_1"}}, {"final": "the second", "evidence": ["det_1_1"]}],
    ]
    path = tmp_path / "plans.yaml"
    path.write_text(yaml.safe_dump(plans))
    planner = ScriptedPlanner(path)
    assert len(planner.plans) == 2 and load_plan(path) == planner.plan == planner.plans[0]
    agent = make_agent(planner, tools=FAKE_TOOLS)
    conv = agent.chat(["sample:coffee"])
    first, second = conv.ask("How many cups?"), conv.ask("Which is the second?")
    assert (first.answer, second.answer) == ("two", "the second")
    assert [s.tool for s in second.trace.tool_steps()] == ["echo"]
    third = conv.ask("And now?")
    assert third.status == "failed" and third.error == "the scripted plan has plans for 2 turns; this is turn 3"
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump([plans[0], [{"tool": "echo"}, {"oops": 1}]]))
    with pytest.raises(UsageError, match=r"bad.yaml: plan of turn 2: step 2 has unknown keys: oops"):
        ScriptedPlanner(tmp_path / "bad.yaml")


def test_page_turns_keep_the_server_limits(tiny_config: Any, shared_pool: Any) -> None:
    """A turn past ``timeout_s`` is stopped at its next step; no media, a long question or an
    unknown planner are one-line errors before anything runs."""
    from tests.fakes import FAKE_TOOLS
    from visagent.agent import Agent
    from visagent.planners import ScriptedPlanner
    from visagent.server import load_settings
    from visagent.ui import Page

    plan = [{"tool": "echo", "args": {"text": "a", "sleep": 0.05}}, {"tool": "echo", "args": {"text": "b"}}, {"final": "x", "evidence": ["obs_1"]}]
    agent = Agent(tiny_config, planner=ScriptedPlanner(plan), tools=FAKE_TOOLS, pool=shared_pool)
    page = Page(agent, load_settings(None, environ={}, timeout_s=0.01, max_question_chars=20))
    visit = page.visit()
    try:
        with pytest.raises(UsageError, match="^add an image or video first"):
            page.start(visit, "what?")
        assert page.add_media(visit, samples=["coins"]) == (["sample:coins = img_0"], [])
        with pytest.raises(UsageError, match=r"^the question is 21 characters long, over the limit of 20 \(server.max_question_chars\)$"):
            page.start(visit, "x" * 21)
        with pytest.raises(UsageError, match="^unknown planner 'script:/etc/passwd'"):
            page.start(visit, "what?", planner="script:/etc/passwd")
        run = page.start(visit, "what?")
        seen = []
        with pytest.raises(UsageError, match=r"^the run took longer than 0.01 s \(server.timeout_s\); it was stopped$"):
            for step in page.follow(run):
                seen.append(step.type)
        # stopped by the first step to end past the deadline: at the latest the first tool call's (it sleeps past it)
        assert seen in (["planner"], ["planner", "tool"]) and run.answer is not None and not run.answer.ok
    finally:
        visit.close()
