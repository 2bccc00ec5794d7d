"""The seams every front door shares: Session, ToolRunner, ids, error codes, strict config."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.fakes import FAKE_TOOLS, EchoIn, EchoOut, FindIn, FindOut
from visagent import ids
from visagent.agent import Agent
from visagent.errors import UsageError
from visagent.planners import FunctionPlanner, ScriptedPlanner
from visagent.replay import replay
from visagent.session import Session
from visagent.tools.base import Region, Tool
from visagent.types import ERROR_CODES, ErrorStep

ROOT = Path(__file__).resolve().parents[1]


class FakeTrack(Tool):
    """A tool with a prefix no built-in uses: ids, renumbering and citations must follow it."""

    name = "fake_track"
    description = "Track objects by label (fake, for tests): one trk region per object."
    region_prefixes = ("trk",)

    def run(self, inp: FindIn, ctx: Any) -> FindOut:
        return FindOut(detections=[Region(id=ctx.region_id("trk", i), image=inp.image, box=[i, i, 9, 9], label=inp.label) for i in range(inp.n)])


def _agent(tiny_config: Any, plan: Any, tools: list[Any] | None = None, **kw: Any) -> Agent:
    planner = plan if hasattr(plan, "next") else ScriptedPlanner(plan)
    return Agent(tiny_config, planner=planner, tools=tools or FAKE_TOOLS, **kw)


# -- sessions -------------------------------------------------------------------------------------
def test_chat_turns_replay_on_their_own(tiny_config: Any, tmp_path: Path) -> None:
    """Turn 2 cites and reuses turn 1's det_1_0; its trace alone replays to the same answer."""
    plans = iter(
        [
            [{"tool": "fake_find", "args": {"image": "img_0", "label": "cup"}}, {"final": "two cups", "evidence": ["det_1_0", "det_1_1"]}],
            [{"tool": "fake_find", "args": {"image": "img_0", "label": "mug", "n": 1}}, {"final": "a mug by det_1_0", "evidence": ["det_2_0", "det_1_0"]}],
        ]
    )
    agent = _agent(tiny_config, FunctionPlanner(lambda s: {"final": "unused"}))
    conv = agent.chat(["sample:coffee"])
    answers = [conv.ask(q, trace_path=tmp_path / f"turn-{k}.jsonl", planner=ScriptedPlanner(next(plans))) for k, q in enumerate(["cups?", "mugs?"], 1)]
    assert all(a.ok for a in answers) and [e.id for e in answers[1].evidence] == ["det_2_0", "det_1_0"]
    assert answers[1].evidence[1].step == -1 and "cup" in answers[1].evidence[1].observation
    meta = answers[1].trace.meta
    assert meta.session is not None and meta.session.calls == 1 and [r["id"] for r in meta.session.regions] == ["det_1_0", "det_1_1"]
    for k in (1, 2):
        result = replay(tmp_path / f"turn-{k}.jsonl", tools=FAKE_TOOLS)
        assert result.same, result.divergence
    # and from the command line, as a user replays a chat turn
    env = {"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "VISAGENT_CACHE_DIR": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, "-m", "visagent.cli", "replay", str(tmp_path / "turn-2.jsonl"), "--json"], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    # fake_find is not installed for the CLI: replay serves its recorded outputs anyway
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["same"] is True


def test_langchain_session_and_loop_share_call_numbers_and_runner(tiny_config: Any) -> None:
    """A Session used by the loop and then by direct calls numbers calls once, in order."""
    agent = _agent(tiny_config, [{"tool": "fake_find", "args": {"image": "img_0", "label": "cup"}}, {"final": "2", "evidence": ["det_1_0"]}])
    session = agent.session(["sample:coffee"])
    assert agent.ask("How many cups?", session=session).ok
    steps: list[Any] = []

    def emit(step: Any) -> Any:
        step.index = len(steps)
        steps.append(step)
        return step

    result = agent.runner.call(session, "fake_find", {"image": "img_0", "label": "mug", "n": 1}, emit=emit)
    assert result.ok and result.step.call == 2 and list(session.regions) == ["det_1_0", "det_1_1", "det_2_0"]
    with pytest.raises(UsageError, match="history or session"):
        agent.stream("q", session=session, history=[])


def test_a_timed_out_tool_cannot_write_into_a_later_call(tiny_config: Any) -> None:
    cfg = tiny_config.model_copy(update={"limits": tiny_config.limits.model_copy(update={"tool_timeout_s": 0.2})})
    late: dict[str, Any] = {}
    done = threading.Event()

    class Slow(Tool):
        name = "slow"
        description = "Sleeps, then tries to make a region id and add an image (fake, for tests)."
        region_prefixes = ("det",)

        def run(self, inp: EchoIn, ctx: Any) -> EchoOut:
            if inp.sleep:
                time.sleep(inp.sleep)
                for what, attempt in (("id", lambda: ctx.region_id("det", 0)), ("image", lambda: ctx.add_image(ctx.image("img_0"), "late"))):
                    try:
                        late[what] = attempt()
                    except Exception as exc:  # noqa: BLE001 - recorded for the assertion
                        late[what] = exc
                done.set()
            return EchoOut(text="quick")

    plan = [{"tool": "slow", "args": {"sleep": 0.6}}, {"tool": "slow", "args": {"text": "b"}}, {"final": "b", "evidence": ["obs_1"]}]
    ans = Agent(cfg, planner=ScriptedPlanner(plan), tools=[Slow]).ask("q", ["sample:coins"])
    assert done.wait(5)
    err = next(s for s in ans.trace.steps if isinstance(s, ErrorStep))
    assert err.code == "timeout" and ans.ok
    assert ans.trace.tool_steps()[0].call == 1  # the timed-out call gave its number back
    assert all("is over" in str(v) for v in late.values()), late  # the late thread was refused, not ignored
    assert ans.trace.meta.media[-1].id == "img_0"  # no image slipped in


# -- runner and error codes -----------------------------------------------------------------------
def test_every_error_step_has_a_machine_readable_code(tiny_config: Any) -> None:
    cfg = tiny_config.model_copy(update={"limits": tiny_config.limits.model_copy(update={"tool_timeout_s": 0.2, "max_retries": 20})})
    plan = [
        {"tool": "nope", "args": {}},
        {"tool": "fake_find", "args": {"image": "img_0"}},
        {"tool": "echo", "args": {"text": "t", "fail": True}},
        {"tool": "fake_find", "args": {"image": "img_9", "label": "x"}},
        {"tool": "echo", "args": {"sleep": 1}},
        {"tool": "echo", "args": {"text": "a"}},
        {"tool": "echo", "args": {"text": "a"}},
        {"final": "x", "evidence": ["det_7_7"]},
        {"final": "x"},
        {"final": "x", "evidence": ["obs_1"]},
    ]
    ans = Agent(cfg, planner=ScriptedPlanner(plan), tools=FAKE_TOOLS).ask("How many cups?", ["sample:coins"], max_steps=12)
    codes = [s.code for s in ans.trace.steps if isinstance(s, ErrorStep)]
    assert codes == ["unknown_tool", "bad_args", "tool_crash", "tool_error", "timeout", "repeat", "unknown_ids", "no_evidence"]
    assert set(codes) <= set(ERROR_CODES) and ans.ok


def test_old_error_steps_get_codes_from_their_source() -> None:
    assert ErrorStep(source="final", message="the final answer cites no evidence: ...").code == "no_evidence"
    assert ErrorStep(source="tool", message="unknown tool 'x'; available: a").code == "unknown_tool"
    assert ErrorStep(source="args", message="bad arguments").code == "bad_args"


# -- ids ------------------------------------------------------------------------------------------
def test_a_new_prefix_gets_ids_citations_renumbering_and_prompt_shortening(tiny_config: Any, tmp_path: Path) -> None:
    assert "trk" in ids.prefixes() and ids.parse_region_id("trk_3_1") == ids.RegionId("trk", 3, 1)
    assert ids.region_in_text_re().findall("see trk_1_0 and det_2_1, not xyz_1_0") == ["trk_1_0", "det_2_1"]
    assert ids.renumber({"a": ["trk_1_0", "trk_2_0"]}, 1, 5) == {"a": ["trk_5_0", "trk_2_0"]}
    from visagent.planners.constrain import action_schema

    schema = json.dumps(action_schema({}, known_ids=[f"trk_1_{i}" for i in range(500)]))
    assert "trk" in schema
    with pytest.raises(ValueError, match="not declared"):
        ids.format_region_id("zzz", 1, 0)
    # a recorded call served to a re-planned run is renumbered, whatever the prefix
    trace = tmp_path / "t.jsonl"
    tools = [*FAKE_TOOLS, FakeTrack]
    plan = [{"tool": "fake_track", "args": {"image": "img_0", "label": "p"}}, {"final": "two", "evidence": ["trk_1_0", "trk_1_1"]}]
    assert _agent(tiny_config, plan, tools).ask("How many people?", ["sample:coffee"], trace_path=trace).ok
    replan = tmp_path / "replan.yaml"
    replan.write_text('- {tool: echo, args: {text: first}}\n- {tool: fake_track, args: {image: img_0, label: p}}\n- {final: two, evidence: [trk_2_0, trk_2_1]}\n')
    result = replay(trace, planner=f"script:{replan}", tools=tools)
    assert result.same and result.served == 1 and result.ran == 1
    assert [e.id for e in result.answer.evidence] == ["trk_2_0", "trk_2_1"]


def test_trace_from_a_newer_format_is_a_one_line_error(tmp_path: Path) -> None:
    from visagent.trace import read_trace

    bad = tmp_path / "new.jsonl"
    bad.write_text('{"type": "meta", "format": 99, "question": "q"}\n')
    with pytest.raises(UsageError, match="trace format 99 is newer"):
        read_trace(bad)


# -- config ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"limts": {}}, "unknown configuration key: limts (did you mean 'limits'?)"),
        ({"planner": {"max_image": 3}}, "planner.max_image (did you mean 'planner.max_images'?)"),
        ({"models": {"detect": {"chekpoint": "x"}}}, "models.detect.chekpoint (did you mean 'models.detect.checkpoint'?)"),
        ({"server": {"tokn": "x"}}, "server.tokn (did you mean 'server.token'?)"),
        ({"planner": {"tool_calling": "sometimes"}}, "planner.tool_calling"),
    ],
)
def test_unknown_or_bad_config_keys_name_the_nearest_valid_one(overrides: dict[str, Any], message: str) -> None:
    from visagent.config import load_config

    with pytest.raises(UsageError) as err:
        load_config(profile="tiny", overrides=overrides, environ={})
    assert message in str(err.value) and "\n" not in str(err.value)


def test_cli_config_typo_exits_2_with_one_line(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("limts:\n  max_steps: 3\n")
    proc = subprocess.run([sys.executable, "-m", "visagent.cli", "models", "--config", str(cfg)], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0
    assert "limts (did you mean 'limits'?)" in proc.stderr


def test_planner_options_are_typed_per_kind(tiny_config: Any) -> None:
    from visagent.config import load_config

    cfg = load_config(profile="tiny", overrides={"planner": {"tool_calling": "false", "max_images": 2, "charset": "unicode"}}, environ={})
    assert cfg.planner.chat().tool_calling is False and cfg.planner.chat().max_images == 2
    assert cfg.planner.llava().charset == "unicode" and not hasattr(cfg.planner.llava(), "tool_calling")


def test_session_snapshot_round_trips(tiny_config: Any) -> None:
    agent = _agent(tiny_config, [{"tool": "fake_find", "args": {"image": "img_0", "label": "cup"}}, {"final": "2", "evidence": ["det_1_0"]}])
    session = agent.session(["sample:coffee"])
    agent.ask("How many cups?", session=session)
    snap = session.snapshot()
    assert snap is not None
    twin = Session(tiny_config)
    twin.restore(snap.model_validate_json(snap.model_dump_json()))
    assert twin.calls == 1 and twin.region("det_1_1").box == session.region("det_1_1").box and twin.history == session.history
