"""Model text never carries terminal control sequences to the trace, the answer or the terminal."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.fakes import FAKE_TOOLS
from visagent.cli import main
from visagent.safe import strip_controls
from visagent.types import describe_step

NASTY = "a square\x1b[2J\x07 moves\x1b]0;pwned\x07\x9b31m\r\n\tleft\x00"
VIDEO = Path(__file__).resolve().parents[1] / "scenarios" / "media" / "moving_square.mp4"


def _no_controls(text: str) -> bool:
    return not any((ord(c) < 32 and c not in "\n\t") or 0x7F <= ord(c) <= 0x9F for c in text)


@pytest.mark.parametrize(
    ("text", "clean"),
    [
        ("\x1b[2J\x07", ""),
        ("yes\x1b[31m red\x1b[0m", "yes red"),
        ("line 1\r\nline 2\tend", "line 1\nline 2\tend"),
        ("title\x1b]0;x\x07 after", "title after"),
        ("C1\x85 next\x9b2J", "C1 next"),
        ("plain café — ok", "plain café — ok"),
    ],
)
def test_strip_controls(text, clean):
    assert strip_controls(text) == clean


def test_tool_and_planner_text_is_stripped(make_agent):
    plan = [
        {"tool": "echo", "args": {"text": NASTY}, "thought": "think\x1b[2J\x07 hard"},
        {"final": "it moves\x1b[2J\x07 left"},
    ]
    answer = make_agent(plan, tools=FAKE_TOOLS).ask("q", ["sample:coins"])
    assert answer.ok, answer.error
    assert answer.answer == "it moves left"
    tool = answer.trace.tool_steps()[0]
    assert tool.observation == "a square moves\n\tleft" and tool.output["text"] == "a square moves\n\tleft"
    planner = answer.trace.steps[0]
    assert planner.thought == "think hard"
    for step in answer.trace.steps:
        assert _no_controls(describe_step(step))
        assert _no_controls(step.model_dump_json())


def test_video_qa_answer_on_the_terminal_has_no_control_characters(tmp_path, monkeypatch, capsys):
    from visagent.tools import video

    monkeypatch.setattr(video.VideoLlavaBundle, "answer", lambda self, frames, question: NASTY)
    plan = tmp_path / "plan.yaml"
    plan.write_text(
        yaml.safe_dump([
            {"tool": "video_qa", "args": {"video": "vid_0", "question": "what moves?", "frames": 2}},
            {"final": "a square\x1b[2J\x07", "evidence": ["obs_1"]},
        ])
    )  # fmt: skip
    code = main(["ask", str(VIDEO), "What moves?", "--profile", "tiny", "--planner", f"script:{plan}", "--local", "-v"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "a square moves" in captured.err  # the -v step lines
    for stream in (captured.out, captured.err):  # (a model's loading progress bar may draw with \r: not model text)
        assert not any(seq in stream for seq in ("\x1b", "\x07", "\x9b", "\x00"))
    assert _no_controls(captured.out) and "a square" in captured.out


@pytest.mark.parametrize("final", ["use [red] here [/x] and [bold]x[/bold]", "[/]"])
def test_answer_brackets_are_printed_as_text(tmp_path, capsys, final):
    plan = tmp_path / "plan.yaml"
    plan.write_text(yaml.safe_dump([{"final": final}]))
    code = main(["ask", "sample:coins", "q", "--profile", "tiny", "--planner", f"script:{plan}", "--local", "-v"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert final in captured.out.splitlines()
