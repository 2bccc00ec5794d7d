"""Scenario files: expectations (each kind passes and fails), invalid files, the `run` command,
resuming after a killed run, JUnit output and the pytest collector."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from tests.fakes import FAKE_TOOLS
from visagent.cli import main
from visagent.scenarios import Expect, ScenarioError, ScenarioRunner, check, first_number, load_file, read_results

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def answer(tiny_config, shared_pool):
    from visagent.agent import Agent
    from visagent.planners import ScriptedPlanner

    plan = [
        {"tool": "fake_find", "args": {"image": "img_0", "label": "coin", "n": 3}},
        {"tool": "echo", "args": {"text": "engraved coins"}},
        {"final": "I count 3 coins.", "evidence": ["det_1_0", "obs_2"]},
    ]
    return Agent(tiny_config, planner=ScriptedPlanner(plan), tools=FAKE_TOOLS, pool=shared_pool).ask("How many?", ["sample:coins"])


BOX = [0, 0, 192, 151.5]  # det_1_0 of fake_find on coins (384x303)
CASES = {
    "status": ({"status": "answered"}, {"status": "failed"}),
    "answer_contains": ({"answer_contains": ["COUNT", "coins"]}, {"answer_contains": ["coins", "cats"]}),
    "answer_equals": ({"answer_equals": " i count 3 coins "}, {"answer_equals": "3 coins"}),
    "answer_regex": ({"answer_regex": r"\b3\s+coins"}, {"answer_regex": r"^\d+$"}),
    "count": ({"count": {"value": 3, "source": "both"}}, {"count": {"value": 5, "tolerance": 1}}),
    "tools": ({"tools": ["fake_find", "echo"]}, {"tools": ["fake_find", "detect"]}),
    "evidence": ({"evidence": ["det_1_*", "obs_2"]}, {"evidence": ["det_1_2"]}),
    "iou": ({"iou": {"box": [0, 0, 180, 150], "threshold": 0.8}}, {"iou": {"box": [200, 160, 380, 300], "threshold": 0.1}}),
    "output_contains": ({"output_contains": {"tool": "echo", "text": "ENGRAVED"}}, {"output_contains": {"tool": "fake_find", "text": "engraved"}}),
}


@pytest.mark.parametrize("kind", list(CASES))
def test_every_expectation_kind_passes_and_fails(answer, kind):
    good, bad = CASES[kind]
    for spec, want in ((good, True), (bad, False)):
        results = [c for c in check(Expect.model_validate(spec), answer) if c["kind"] == kind]
        assert results and all(c["passed"] is want for c in results), (spec, results)


def test_count_reads_numbers_words_and_tool_outputs(answer):
    assert first_number("There are twenty four") == 20.0 and first_number("24 coins") == 24.0
    assert first_number("none") == 0.0 and first_number("a cup") is None and first_number("det_1_0 has 4") == 4.0
    got = next(c for c in check(Expect(count={"value": 3, "source": "tool", "label": "coin"}), answer) if c["kind"] == "count")
    assert got["passed"] and got["got"] == {"tool": 3}
    got = next(c for c in check(Expect(count={"value": 3, "source": "tool", "label": "cat"}), answer) if c["kind"] == "count")
    assert not got["passed"] and got["got"] == {"tool": 0}


INVALID = [
    ("name: a\nmedia: [sample:coins]\n", "scenario 'a': field question: Field required"),
    ("name: a\nmedia: [sample:nope]\nquestion: q\n", "scenario 'a': field media[0]: unknown sample 'sample:nope'"),
    ("name: a\nmedia: [missing.png]\nquestion: q\n", "scenario 'a': field media[0]: file not found: missing.png"),
    ("name: a\nquestion: q\nexpect: {count: {value: -1}}\n", "scenario 'a': field expect.count.value"),
    ("name: a\nquestion: q\nexpect: {answer_regex: '('}\n", "scenario 'a': field expect.answer_regex: not a valid regular expression"),
    ("name: a\nquestion: q\nexpect: {colour: red}\n", "scenario 'a': field expect.colour: Extra inputs are not permitted"),
    ("name: a\nquestion: q\nplan: [{tool: x, argz: {}}]\n", "scenario 'a': field plan: step 1 has unknown keys: argz"),
    ("name: a\nquestion: [q1, q2]\nplan: [{final: x}]\n", "scenario 'a': field plan: 2 turns need a list of 2 plans"),
    ("- {name: a, question: q}\n- {name: a, question: r}\n", "scenario 'a': field name: duplicate scenario name"),
    ("- {name: a, question: q}\n- {question: r}\n", "scenario #2: field name: Field required"),
    ("name: a\nquestion: q\nexpect: {iou: {box: [5, 5, 1, 1]}}\n", "scenario 'a': field expect.iou[0].box"),
    ("name: [unclosed\n", "not valid YAML (line"),
    ("42\n", "expected a scenario mapping"),
]


@pytest.mark.parametrize("text,message", INVALID)
def test_invalid_scenario_files_name_file_scenario_and_field(tmp_path, capsys, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ScenarioError) as info:
        load_file(path)
    assert str(path) in str(info.value) and message in str(info.value)
    assert main(["run", str(path), "--out", str(tmp_path / "r.jsonl")]) == 2
    err = capsys.readouterr().err
    assert "bad.yaml" in err and message.split(":")[0] in err and len(err.strip().splitlines()) == 1


def _caption_scenarios(n: int, fail: set[int] = frozenset()) -> list[dict]:
    return [
        {
            "name": f"s{k}",
            "media": ["sample:chelsea"],
            "question": "What is it?",
            "plan": [{"tool": "caption", "args": {"image": "img_0"}}, {"final": "a cat", "evidence": ["obs_1"]}],
            "expect": {"answer_equals": "a dog" if k in fail else "a cat", "tools": ["caption"]},
        }
        for k in range(n)
    ]


def test_run_command_results_summary_and_junit(tmp_path, capsys):
    sc = tmp_path / "suite.yaml"
    scenarios = _caption_scenarios(3, fail={1})
    scenarios.append({**scenarios[0], "name": "real", "profile": "default", "requires": ["caption"]})
    sc.write_text(yaml.safe_dump({"scenarios": scenarios}))
    out, junit = tmp_path / "r.jsonl", tmp_path / "junit.xml"
    code = main(["run", str(sc), "--out", str(out), "--profile", "tiny", "--workers", "2", "--junit", str(junit)])
    assert code == 1  # s1 fails
    results = {r["name"]: r for r in read_results(out)}
    assert set(results) == {"s0", "s1", "s2", "real"}
    assert results["s0"]["passed"] and results["s2"]["passed"] and results["s1"]["passed"] is False
    assert results["real"]["skipped"].startswith("requires the real caption checkpoint")
    assert results["s0"]["answer"]["answer"] == "a cat" and results["s0"]["answer"]["trace"]["steps"]
    failed = [c for c in results["s1"]["checks"] if not c["passed"]]
    assert [c["kind"] for c in failed] == ["answer_equals"]
    printed = capsys.readouterr().out
    assert "2 passed, 1 failed, 1 skipped of 4 scenarios" in printed and "answer_equals" in printed and "p95" in printed
    suite = ET.parse(junit).getroot()
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped")) == ("4", "1", "1")
    assert suite.find("testcase[@name='s1']/failure") is not None
    # passing suite -> exit 0
    sc.write_text(yaml.safe_dump(_caption_scenarios(1)))
    assert main(["run", str(sc), "--out", str(out), "--profile", "tiny"]) == 0


def test_workers_share_one_model_pool(tmp_path):
    sc = tmp_path / "s.yaml"
    sc.write_text(yaml.safe_dump(_caption_scenarios(1) + [{**_caption_scenarios(1)[0], "name": "d", "profile": "default"}]))
    tiny, default = load_file(sc)
    runner = ScenarioRunner(profile="tiny")
    assert runner.agent(tiny) is not runner.agent(default)
    assert runner.agent(tiny).pool is runner.agent(default).pool is runner.pool


def test_resume_after_a_killed_run(tmp_path):
    sc = tmp_path / "many.yaml"
    n = 12
    sc.write_text(yaml.safe_dump(_caption_scenarios(n)))
    out = tmp_path / "r.jsonl"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "visagent.cli", "run", str(sc), "--out", str(out), "--profile", "tiny"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
    )  # fmt: skip
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            if out.exists() and out.read_text().count("\n") >= 1:
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the run ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    done_before = read_results(out)
    assert 1 <= len(done_before) < n
    with out.open("a") as fh:
        fh.write('{"id": "cut off by the ki')  # a line a kill left half-written
    assert main(["run", str(sc), "--out", str(out), "--profile", "tiny", "--resume"]) == 0
    lines = out.read_text().splitlines()
    results = [json.loads(line) for line in lines]  # every line is whole JSON again
    assert sorted(r["name"] for r in results) == sorted(f"s{k}" for k in range(n))
    assert results[: len(done_before)] == done_before  # finished scenarios were not run again
    # resuming a complete file runs nothing
    assert main(["run", str(sc), "--out", str(out), "--profile", "tiny", "--resume"]) == 0
    assert out.read_text().splitlines() == lines


def test_shipped_scenarios_are_valid_and_real_ones_skip_with_a_reason():
    from visagent.scenarios import load_scenarios

    scenarios = load_scenarios([ROOT / "scenarios"])
    names = {s.name for s in scenarios}
    assert {"coins-24", "astronaut-one-person", "chelsea-one-cat", "coffee-one-cup", "page-text", "page-title", "video-frames"} <= names
    runner = ScenarioRunner(profile="tiny")
    real = [s for s in scenarios if s.requires]
    assert real and all(s.plan is None for s in real)
    for s in real:
        reason = runner.skip_reason(s)
        if reason is not None:  # no real checkpoints on this machine
            assert reason.startswith("requires the real")
    for s in scenarios:
        if not s.requires:
            assert runner.skip_reason(s) is None, s.name


def test_pytest_collects_scenarios(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "scenarios/ocr.yaml", "scenarios/real_models.yaml", "-q", "-p", "no:cacheprovider", "-rs"],
        cwd=ROOT, capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert "2 passed" in proc.stdout
    assert "requires the real planner checkpoint" in proc.stdout or "7 passed" in proc.stdout
