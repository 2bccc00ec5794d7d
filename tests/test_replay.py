"""Replaying recorded traces: same answer without models, divergence, media checks, re-planning."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.fakes import FAKE_TOOLS
from visagent.cli import main
from visagent.errors import UsageError
from visagent.pool import ModelPool
from visagent.replay import replay
from visagent.trace import read_trace

PLAN = [
    {"tool": "fake_find", "args": {"image": "img_0", "label": "cup", "n": 2}},
    {"tool": "nope", "args": {}},
    {"tool": "segment", "args": {"image": "img_0", "boxes": ["det_1_0"]}},
    {"tool": "segment", "args": {"image": "img_0", "boxes": ["det_1_0"]}},  # a repeat: an error step
    {"final": "1 cup", "evidence": ["det_1_0", "mask_2_0"]},
]


@pytest.fixture
def recorded(make_agent, tmp_path) -> Path:
    path = tmp_path / "trace.jsonl"
    from visagent.registry import load_builtin_tools

    answer = make_agent(PLAN, tools=[*FAKE_TOOLS, load_builtin_tools()["segment"]]).ask(
        "How many cups?", ["sample:coffee"], trace_path=path
    )
    assert answer.ok and [e.id for e in answer.evidence] == ["det_1_0", "mask_2_0"]
    return path


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _write(path: Path, lines: list[dict]) -> None:
    path.write_text("".join(json.dumps(d) + "\n" for d in lines))


def test_replay_reaches_the_same_answer_without_models(recorded):
    pool = ModelPool()
    result = replay(recorded, pool=pool)
    assert result.same and result.divergence is None
    assert result.answer.answer == "1 cup" and [e.id for e in result.answer.evidence] == ["det_1_0", "mask_2_0"]
    assert result.served == 2 and result.ran == 0
    assert pool.stats()["models"] == [] and result.models_loaded == 0
    trace, _ = read_trace(recorded)
    replayed = result.answer.trace.steps
    assert [s.type for s in replayed] == [s.type for s in trace.steps]
    seg = [s for s in replayed if s.type == "tool" and s.tool == "segment"][0]
    orig = [s for s in trace.steps if s.type == "tool" and s.tool == "segment"][0]
    assert seg.output == orig.output and seg.models == orig.models and seg.cache == orig.cache
    # the typed output was rebuilt: the evidence region is a full Mask (rle and area kept)
    assert "rle" in result.answer.evidence[1].region and "area" in result.answer.evidence[1].region


def test_cli_replay_same_answer_in_a_fresh_process(recorded):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "visagent.cli", "replay", str(recorded), "--json"], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["same"] is True and data["answer"] == "1 cup" and data["models_loaded"] == 0 and data["served"] == 2
    assert "torch" not in data  # plain JSON outcome


def test_replay_divergence_in_a_tool_output(recorded, capsys):
    lines = _lines(recorded)
    find = next(d for d in lines if d.get("type") == "tool" and d["tool"] == "fake_find")
    find["output"]["detections"].pop()  # the recorded tool now returns one box: the observation differs
    _write(recorded, lines)
    result = replay(recorded, tools=FAKE_TOOLS)
    assert not result.same
    assert result.divergence["step"] == find["index"]
    assert result.divergence["expected"]["observation"] != result.divergence["got"]["observation"]


def test_cli_replay_divergence_in_a_registered_tool_output(recorded, capsys):
    lines = _lines(recorded)
    seg = next(d for d in lines if d.get("type") == "tool" and d["tool"] == "segment")
    seg["output"]["masks"][0]["area"] += 1  # segment's observation is recomputed from its typed Output
    _write(recorded, lines)
    assert main(["replay", str(recorded)]) == 1
    out = capsys.readouterr().out
    assert f"at step {seg['index']}" in out and "diverged" in out


def test_replay_divergence_in_the_final_answer(recorded, capsys):
    lines = _lines(recorded)
    lines[-1]["answer"] = "2 cups"  # the answer record no longer matches the recorded final step
    _write(recorded, lines)
    assert main(["replay", str(recorded), "--json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["same"] is False and data["divergence"]["expected"]["answer"] == "2 cups"
    assert data["divergence"]["got"]["answer"] == "1 cup"


def test_replay_refuses_changed_media(recorded, capsys):
    lines = _lines(recorded)
    lines[0]["media"][0]["sha256"] = "0" * 64
    _write(recorded, lines)
    with pytest.raises(UsageError, match="img_0 .sample:coffee. has changed since the run"):
        replay(recorded)
    assert main(["replay", str(recorded)]) == 2
    assert "has changed" in capsys.readouterr().err


def test_replay_of_in_memory_inputs_uses_the_copies_beside_the_trace(make_agent, tmp_path):
    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(0).integers(0, 255, (24, 40, 3), dtype=np.uint8)
    rgba = Image.fromarray(np.dstack([pixels, np.full((24, 40), 200, np.uint8)]), "RGBA")
    plan = [{"tool": "fake_find", "args": {"image": "img_1", "label": "cup", "n": 1}}, {"final": "x", "evidence": ["det_1_0"]}]
    path = tmp_path / "t.jsonl"
    make_agent(plan, tools=FAKE_TOOLS).ask("q", [pixels, rgba], trace_path=path)
    trace, _ = read_trace(path)
    assert [m.saved_copy for m in trace.meta.media] == [f"t.jsonl.media/{trace.meta.run_id}-img_{i}.png" for i in range(2)]
    result = replay(path, tools=FAKE_TOOLS)
    assert result.same, result.divergence
    assert result.answer.trace.tool_steps()[0].output["detections"][0]["box"] == [0, 0, 20, 12]  # the copy's size
    (tmp_path / trace.meta.media[1].saved_copy).unlink()
    with pytest.raises(UsageError, match="cannot re-load img_1: its copy .* is missing"):
        replay(path)
    # no trace path, no copy: the error says what replay needs
    lines = _lines(path)
    lines[0]["media"][0]["saved_copy"] = None
    _write(path, lines)
    with pytest.raises(UsageError, match="cannot re-load img_0: its source was 'array' and the trace has no copy of it"):
        replay(path)


def test_replay_an_interrupted_trace(recorded):
    lines = _lines(recorded)
    _write(recorded, lines[:4])  # killed after the first tool step and the planner's next decision
    result = replay(recorded, tools=FAKE_TOOLS)
    assert result.same and result.recorded is None
    assert result.answer.status == "failed"  # the recorded decisions run out


def test_replan_serves_matching_calls_and_runs_new_ones(recorded, tmp_path):
    plan = tmp_path / "plan.yaml"
    plan.write_text(
        yaml.safe_dump(
            [
                {"tool": "echo", "args": {"text": "new call"}},  # not recorded: runs for real
                {"tool": "fake_find", "args": {"image": "img_0", "label": "cup", "n": 2}},  # recorded as call 1
                # recorded as det_1_0, spelled differently (explicit default, other key order): the same call
                {"tool": "segment", "args": {"boxes": ["det_2_0"], "points": None, "image": "img_0"}},
                {"final": "1 cup", "evidence": ["det_2_0", "mask_3_0"]},
            ]
        )
    )
    pool = ModelPool()
    result = replay(recorded, planner=f"script:{plan}", tools=FAKE_TOOLS, pool=pool)
    assert (result.served, result.ran) == (2, 1)
    assert result.same, result.divergence  # the renumbered evidence maps back to the recorded ids
    assert pool.stats()["models"] == []  # segment was served, so SAM never loaded
    tools = result.answer.trace.tool_steps()
    assert [s.tool for s in tools] == ["echo", "fake_find", "segment"]
    assert tools[1].output["detections"][0]["id"] == "det_2_0"  # renumbered to the new call
    assert tools[2].output["masks"][0]["id"] == "mask_3_0"


def test_replan_to_a_different_answer_exits_1(recorded, tmp_path, capsys):
    plan = tmp_path / "plan.yaml"
    plan.write_text(yaml.safe_dump([{"tool": "fake_find", "args": {"image": "img_0", "label": "cup", "n": 2}}, {"final": "2 cups"}]))
    assert main(["replay", str(recorded), "--planner", f"script:{plan}", "--json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["replanned"] and data["answer"] == "2 cups" and data["recorded_answer"] == "1 cup"


def test_replay_recreates_the_frames_a_tool_registered(make_agent, tmp_path, capsys):
    from tests.helpers import write_video
    from visagent.registry import load_builtin_tools

    video = write_video(tmp_path / "clip.mp4", [i / 10 for i in range(30)])  # 3 s at 10 fps
    frames_tool = load_builtin_tools()["video_frames"]
    plan = [
        {"tool": "video_frames", "args": {"video": "vid_0", "frames": 3}},
        {"tool": "fake_find", "args": {"image": "img_1", "label": "car", "n": 1}},
        {"final": "a car", "evidence": ["det_2_0"]},
    ]
    path = tmp_path / "trace.jsonl"
    answer = make_agent(plan, tools=[*FAKE_TOOLS, frames_tool]).ask("Is there a car?", [str(video)], trace_path=path)
    assert answer.ok

    result = replay(path, tools=[*FAKE_TOOLS, frames_tool])
    assert result.same, result.divergence
    # re-planning: a new call on a frame needs its pixels, which replay re-created from the video
    new_plan = tmp_path / "plan.yaml"
    new_plan.write_text(yaml.safe_dump([
        {"tool": "video_frames", "args": {"video": "vid_0", "frames": 3}},
        {"tool": "fake_find", "args": {"image": "img_2", "label": "car", "n": 3}},
        {"final": "a car", "evidence": ["det_2_0"]},
    ]))  # fmt: skip
    result = replay(path, planner=f"script:{new_plan}", tools=[*FAKE_TOOLS, frames_tool])
    assert (result.served, result.ran) == (1, 1)
    assert result.answer.ok and len(result.answer.trace.tool_steps()[1].output["detections"]) == 3
    frames = [m for m in result.answer.trace.meta.media if m.parent == "vid_0"]
    assert [m.id for m in frames] == ["img_0", "img_1", "img_2"]
    recorded = [m for m in read_trace(path)[0].meta.media if m.parent == "vid_0"]
    assert [m.sha256 for m in frames] == [m.sha256 for m in recorded]  # the same pixels
    # frames that the video no longer gives at the recorded times are a divergence, not a silent success
    lines = _lines(path)
    step = next(d for d in lines if d.get("type") == "tool" and d.get("tool") == "video_frames")
    step["output"]["frames"][1]["timestamp"] += 0.5
    _write(path, lines)
    result = replay(path, tools=[*FAKE_TOOLS, frames_tool])
    assert not result.same and "differ from the recorded ones" in result.divergence["got_message"]
    assert main(["replay", str(path)]) == 1
    assert "replayed error: video_frames: the frames of vid_0 sampled now" in capsys.readouterr().out


def test_replay_of_a_video_given_as_bytes(make_agent, tmp_path):
    from tests.helpers import write_video
    from visagent.registry import load_builtin_tools

    data = write_video(tmp_path / "clip.mp4", [i / 10 for i in range(20)]).read_bytes()
    frames_tool = load_builtin_tools()["video_frames"]
    plan = [{"tool": "video_frames", "args": {"video": "vid_0", "frames": 2}}, {"final": "two frames", "evidence": ["obs_1"]}]
    path = tmp_path / "runs" / "t.jsonl"
    make_agent(plan, tools=[frames_tool]).ask("q", [data], trace_path=path)
    trace, _ = read_trace(path)
    copy = path.parent / trace.meta.media[0].saved_copy
    assert copy.suffix == ".video" and copy.read_bytes() == data
    result = replay(path, tools=[frames_tool])
    assert result.same, result.divergence


def test_replay_chooses_among_several_runs_in_one_file(make_agent, recorded, capsys):
    second = [{"tool": "fake_find", "args": {"image": "img_0", "label": "cup", "n": 2}}, {"final": "2 cups", "evidence": ["det_1_1"]}]
    make_agent(second, tools=FAKE_TOOLS).ask("How many cups?", ["sample:coffee"], trace_path=recorded)
    assert main(["replay", str(recorded)]) == 0
    captured = capsys.readouterr()
    assert "replaying run 2 of the 2 runs in" in captured.err and "--run" in captured.err
    assert "same answer: '2 cups'" in captured.out
    assert main(["replay", str(recorded), "--run", "1"]) == 0
    captured = capsys.readouterr()
    assert "replaying run 1 of the 2 runs" in captured.err and "same answer: '1 cup'" in captured.out
    assert main(["replay", str(recorded), "--run", "all", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["run"], r["runs"], r["answer"], r["same"]) for r in rows] == [(1, 2, "1 cup", True), (2, 2, "2 cups", True)]
    lines = _lines(recorded)
    first_answer = next(i for i, d in enumerate(lines) if d.get("type") == "answer")
    lines[first_answer]["answer"] = "3 cups"  # only the first run no longer matches
    _write(recorded, lines)
    assert main(["replay", str(recorded)]) == 0  # the last run still matches
    capsys.readouterr()
    assert main(["replay", str(recorded), "--run", "all"]) == 1
    captured = capsys.readouterr()
    assert "run 1: diverged" in captured.out and "run 2: same answer" in captured.out
    assert "1 of 2 runs reached the recorded answer; diverged: run 1" in captured.err
    assert main(["replay", str(recorded), "--run", "3"]) == 2
    assert "holds 2 runs: there is no run 3" in capsys.readouterr().err
    assert main(["replay", str(recorded), "--run", "first"]) == 2
    assert "--run takes a run number from 1, last or all" in capsys.readouterr().err


def test_replay_finds_relative_media_from_another_folder(make_agent, tmp_path, monkeypatch, capsys):
    from PIL import Image

    work, traces, elsewhere = (tmp_path / n for n in ("work", "traces", "elsewhere"))
    for folder in (work, traces, elsewhere):
        folder.mkdir()
    Image.new("RGB", (40, 30), (200, 120, 40)).save(work / "mycat.png")
    monkeypatch.chdir(work)
    plan = [{"tool": "fake_find", "args": {"image": "img_0", "label": "cat", "n": 1}}, {"final": "a cat", "evidence": ["det_1_0"]}]
    path = traces / "t.jsonl"
    make_agent(plan, tools=FAKE_TOOLS).ask("Is there a cat?", ["mycat.png"], trace_path=path)
    trace, _ = read_trace(path)
    assert trace.meta.media[0].source == "mycat.png" and trace.meta.cwd == str(work)
    monkeypatch.chdir(elsewhere)  # neither here nor beside the trace: the run's folder has it
    result = replay(path, tools=FAKE_TOOLS)
    assert result.same, result.divergence
    assert main(["replay", str(path)]) == 0
    assert "same answer: 'a cat'" in capsys.readouterr().out
    # the run's folder gone (e.g. another machine): beside the trace is the next place looked in
    lines = _lines(path)
    lines[0]["cwd"] = str(tmp_path / "gone")
    _write(path, lines)
    with pytest.raises(UsageError, match=r"cannot re-load img_0: mycat.png is not in the run's folder .*gone, the trace's folder"):
        replay(path, tools=FAKE_TOOLS)
    (work / "mycat.png").rename(traces / "mycat.png")
    assert replay(path, tools=FAKE_TOOLS).same


def test_replan_shows_the_replayed_runs_ids(recorded, tmp_path, monkeypatch, capsys):
    import functools

    import visagent.replay

    monkeypatch.setattr(visagent.replay, "replay", functools.partial(replay, tools=FAKE_TOOLS))
    plan = tmp_path / "plan.yaml"
    steps = [
        {"tool": "echo", "args": {"text": "new call"}},
        {"tool": "fake_find", "args": {"image": "img_0", "label": "cup", "n": 2}},  # recorded as call 1, now call 2
        {"tool": "segment", "args": {"image": "img_0", "boxes": ["det_2_0"]}},
        {"final": "1 cup", "evidence": ["det_2_0", "mask_3_0"]},
    ]
    plan.write_text(yaml.safe_dump(steps))
    assert main(["replay", str(recorded), "--planner", f"script:{plan}"]) == 0
    out = capsys.readouterr().out
    assert "same answer: '1 cup' citing det_2_0, mask_3_0" in out
    assert "renumbered from the recorded ones: det_2_0 (recorded as det_1_0), mask_3_0 (recorded as mask_2_0)" in out
    steps[-1]["evidence"] = ["det_2_1"]  # another box: diverged, shown in the replayed run's own ids
    plan.write_text(yaml.safe_dump(steps))
    assert main(["replay", str(recorded), "--planner", f"script:{plan}", "--json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["evidence"] == ["det_2_1"] and data["divergence"]["got"]["evidence"] == ["det_2_1"]
    assert data["divergence"]["expected"]["evidence"] == ["det_1_0", "mask_2_0"]
    assert data["renumbered"] == {"det_2_1": "det_1_1"}


@pytest.mark.parametrize(
    ("max_steps", "status", "error"),
    [(None, "failed", "the scripted plan ran out after 1 steps"), (1, "max_steps", "no final answer within 1 steps")],
)
def test_replay_of_a_run_without_answer_says_so(make_agent, tmp_path, capsys, max_steps, status, error):
    path = tmp_path / "t.jsonl"
    plan = [{"tool": "fake_find", "args": {"image": "img_0", "label": "cup", "n": 1}}]
    answer = make_agent(plan, tools=FAKE_TOOLS).ask("How many cups?", ["sample:coffee"], trace_path=path, max_steps=max_steps)
    assert answer.status == status, answer.error
    assert main(["replay", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"same result: no answer (status {status}: {error}" in out
    assert "same answer" not in out
