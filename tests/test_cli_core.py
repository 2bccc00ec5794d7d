"""The CLI through subprocesses: exit codes, one-line errors, --json, --help without torch, crash safety."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def cli(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "visagent.cli", *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=os.environ.copy()
    )


def assert_one_line_error(proc: subprocess.CompletedProcess, code: int, fragment: str) -> None:
    assert proc.returncode == code, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and fragment in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_help_does_not_import_torch():
    code = "import sys; from visagent.cli import main; main(['--help']); main(['ask', '--help']); sys.stderr.write(str('torch' in sys.modules))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 0 and proc.stderr.strip().endswith("False")
    assert "ask" in proc.stdout and "--max-steps" in proc.stdout


def test_ask_json_prints_exactly_one_answer_object(tmp_path):
    plan = tmp_path / "plan.yaml"
    plan.write_text("- final: nothing needed\n  evidence: []\n")
    proc = cli("ask", "sample:astronaut", "What is in the image?", "--profile", "tiny", "--planner", f"script:{plan}", "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert set(data) >= {"answer", "evidence", "trace"} and data["answer"] == "nothing needed"
    assert "answers are meaningless" in proc.stderr


def test_ask_plain_output_and_trace(tmp_path):
    plan = tmp_path / "plan.yaml"
    plan.write_text("- final: hi\n")
    trace = tmp_path / "t.jsonl"
    proc = cli("ask", "sample:coins", "q?", "--profile", "tiny", "--planner", f"script:{plan}", "--trace", str(trace))
    assert proc.returncode == 0 and "hi" in proc.stdout
    assert json.loads(trace.read_text().splitlines()[-1])["answer"] == "hi"


@pytest.mark.parametrize(
    "args, code, fragment",
    [
        (["ask", "only-a-question"], 2, "needs at least one media input and a question"),
        (["ask", "/no/such.png", "q"], 2, "media not found: /no/such.png"),
        (["ask", "sample:coins", "q", "--planner", "script:/no/plan.yaml"], 2, "plan file not found"),
        (["ask", "sample:coins", "q", "--planner", "nonsense"], 2, "unknown planner 'nonsense'"),
        (["ask", "sample:coins", "q", "--profile", "huge"], 2, "unknown profile 'huge'"),
        (["ask", "sample:coins", "q", "--max-steps", "0"], 2, "--max-steps"),
        (["ask", "sample:coins", "q", "--config", "/no/c.yaml"], 2, "config file not found"),
        (["frobnicate"], 2, "No such command"),
    ],
)
def test_usage_errors_exit_2_with_one_line(args, code, fragment):
    assert_one_line_error(cli(*args), code, fragment)


def test_failed_run_exits_1(tmp_path):
    plan = tmp_path / "plan.yaml"
    plan.write_text("- tool: nope\n  args: {}\n")
    proc = cli("ask", "sample:coins", "q", "--profile", "tiny", "--planner", f"script:{plan}", "--json")
    assert proc.returncode == 1
    assert json.loads(proc.stdout)["status"] == "failed"


def test_unavailable_checkpoint_is_a_one_line_error(tmp_path):
    plan = tmp_path / "plan.yaml"
    plan.write_text("- tool: segment\n  args: {image: img_0, boxes: [[0, 0, 10, 10]]}\n- final: x\n")
    proc = cli("ask", "sample:coins", "q", "--planner", f"script:{plan}")
    assert_one_line_error(proc, 2, "is not available offline")


def test_tools_json_lists_schemas():
    proc = cli("tools", "--json")
    assert proc.returncode == 0
    tools = json.loads(proc.stdout)
    for t in tools:
        assert set(t) == {"name", "description", "input_schema", "origin"} and t["input_schema"]["type"] == "object"
        assert t["origin"] == "builtin"


def test_models_and_doctor():
    proc = cli("models", "--profile", "tiny", "--json")
    assert proc.returncode == 0
    rows = {r["family"]: r for r in json.loads(proc.stdout)["models"]}
    assert rows["segment"]["checkpoint"] == "tiny:sam" and rows["segment"]["available"]
    # OCR's real weights ship in its package (three PP-OCR ONNX models, several MB)
    assert rows["ocr"]["checkpoint"] == "builtin" and rows["ocr"]["weights_bytes"] > 5e6
    proc = cli("doctor", "--profile", "tiny")
    assert proc.returncode == 0 and "torch" in proc.stdout and "transformers" in proc.stdout


CRASH_SCRIPT = """
import sys, time
from visagent.agent import Agent
from visagent.config import load_config
from visagent.planners import FunctionPlanner
from visagent.types import Action
from tests.fakes import FAKE_TOOLS
n = iter(range(1000))
agent = Agent(load_config(profile="tiny"), planner=FunctionPlanner(lambda s: Action(tool="echo", args={"text": str(next(n)), "sleep": 0.05})), tools=FAKE_TOOLS)
agent.ask("q", ["sample:coins"], trace_path=sys.argv[1], max_steps=1000)
"""


def test_killed_run_leaves_every_finished_step_on_disk(tmp_path):
    from visagent.trace import read_trace

    trace = tmp_path / "t.jsonl"
    proc = subprocess.Popen([sys.executable, "-c", CRASH_SCRIPT, str(trace)], cwd=ROOT, env=os.environ.copy())
    try:
        deadline = time.time() + 60
        while time.time() < deadline and (not trace.exists() or trace.read_text().count('"type":"tool"') < 5):
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    steps, record = read_trace(trace)
    assert record is None  # no answer: the run was killed
    tools = steps.tool_steps()
    assert len(tools) >= 5
    assert [t.output["text"] for t in tools] == [str(i) for i in range(len(tools))]


def test_ask_on_a_terminal_shows_what_the_run_is_doing(tmp_path):
    """On a terminal, `ask` shows a transient status line that follows the steps and says which
    model is loading; the answer is printed after it."""
    import pty

    plan = tmp_path / "plan.yaml"
    plan.write_text("- tool: count\n  args: {image: img_0, label: cup}\n- final: There are cups.\n  evidence: [obs_1]\n")
    cmd = [sys.executable, "-m", "visagent.cli", "ask", "sample:coffee", "How many cups?", "--profile", "tiny", "--planner", f"script:{plan}"]
    pid, fd = pty.fork()
    if pid == 0:  # the child: the CLI with the pseudo-terminal as stdout and stderr
        os.chdir(ROOT)
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.execv(sys.executable, cmd)
    chunks = []
    while True:
        try:
            data = os.read(fd, 65536)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    _, status = os.waitpid(pid, 0)
    text = b"".join(chunks).decode(errors="replace")
    assert os.waitstatus_to_exitcode(status) == 0, text[-2000:]
    assert "planning ..." in text and "running count ..." in text
    assert "loading detect model tiny:grounding-dino on cpu ..." in text
    assert re.search(r"loaded detect model tiny:grounding-dino on cpu in [0-9.]+ s \([0-9.]+ MB\)", text), text[-2000:]
    assert text.rindex("There are cups.") > text.rindex("running count ...")


def test_version_bare_command_and_planner_help() -> None:
    from importlib.metadata import version

    proc = cli("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"visagent {version('visagent')}"
    bare = cli()
    assert bare.returncode == 0 and "error:" not in bare.stderr and "Usage" in bare.stdout + bare.stderr
    helped = cli("ask", "--help")
    assert "langchain" in helped.stdout


def test_step_count_counts_planner_steps_only(tmp_path: Path) -> None:
    """An animated GIF adds a note step; the summary counts the planner's steps (1 here)."""
    from PIL import Image

    frames = [Image.new("RGB", (20, 20), c) for c in ("red", "blue")]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    plan = tmp_path / "plan.yaml"
    plan.write_text("- {final: hello, evidence: []}\n")
    proc = cli("ask", str(tmp_path / "anim.gif"), "Hi?", "--profile", "tiny", "--planner", f"script:{plan}", "--max-steps", "1")
    assert proc.returncode == 0, proc.stderr
    assert "1 step, 0 tool calls" in proc.stdout


def test_tools_human_output_keeps_bracketed_text() -> None:
    proc = cli("tools")
    assert proc.returncode == 0 and "[x0, y0, x1, y1] pixels" in proc.stdout and "([[x, y]], labels" in proc.stdout
