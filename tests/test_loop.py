"""The ReAct loop with scripted / function planners and fake tools: every path and failure."""

from __future__ import annotations

import json

import pytest

from tests.fakes import FAKE_TOOLS
from visagent.agent import Agent
from visagent.errors import PlannerOutputError, UsageError
from visagent.planners import FunctionPlanner, ScriptedPlanner, parse_action
from visagent.trace import read_trace
from visagent.types import Action, Answer, ErrorStep, Final, FinalStep, PlannerStep, ToolStep


@pytest.fixture
def agent_for(tiny_config):
    def make(plan, **kw):
        planner = plan if hasattr(plan, "next") else ScriptedPlanner(plan)
        return Agent(tiny_config, planner=planner, tools=FAKE_TOOLS, **kw)

    return make


def test_scripted_run_resolves_evidence(agent_for):
    plan = [
        {"tool": "fake_find", "args": {"image": "img_0", "label": "cat"}},
        {"final": "2 cats", "evidence": ["det_1_0", "det_1_1", "obs_1"]},
    ]
    ans = agent_for(plan).ask("How many cats?", ["sample:chelsea"])
    assert ans.status == "answered" and ans.answer == "2 cats"
    assert [e.id for e in ans.evidence] == ["det_1_0", "det_1_1", "obs_1"]
    ev = ans.evidence[0]
    assert ev.kind == "region" and ev.tool == "fake_find" and ev.call == 1
    assert ev.region["box"] == [0, 0, 451 / 2, 300 / 2]
    assert ans.evidence[2].kind == "observation" and "2 cat found" in ans.evidence[2].observation
    types = [s.type for s in ans.trace.steps]
    assert types == ["planner", "tool", "planner", "final"]
    assert [s.index for s in ans.trace.steps] == [0, 1, 2, 3]


def test_region_ids_number_tool_calls(agent_for):
    plan = [
        {"tool": "fake_find", "args": {"image": "img_0", "label": "a"}},
        {"tool": "fake_find", "args": {"image": "img_1", "label": "b", "n": 3}},
        {"final": "ok", "evidence": ["det_2_2"]},
    ]
    ans = agent_for(plan).ask("q", ["sample:coins", "sample:coffee"])
    tool_steps = ans.trace.tool_steps()
    ids = [d["id"] for s in tool_steps for d in s.output["detections"]]
    assert ids == ["det_1_0", "det_1_1", "det_2_0", "det_2_1", "det_2_2"]
    assert ans.evidence[0].region["image"] == "img_1"


def test_stream_yields_the_trace_steps_as_they_happen(agent_for):
    plan = [{"tool": "echo", "args": {"text": "hi"}}, {"final": "hi", "evidence": ["obs_1"]}]
    run = agent_for(plan).stream("q", ["sample:coins"])
    seen = []
    for step in run:
        seen.append(step)
        assert run.trace.steps[-1] is step  # recorded before it is yielded
    assert seen == run.answer.trace.steps


@pytest.mark.parametrize(
    "bad, source, fragment",
    [
        ({"tool": "nope", "args": {}}, "tool", "unknown tool 'nope'; available: fake_find, echo, noop"),
        ({"tool": "fake_find", "args": {"image": "img_0"}}, "args", "label: Field required"),
        ({"tool": "fake_find", "args": {"image": "img_0", "label": "x", "threshold": float("nan")}}, "args", "threshold"),
        ({"tool": "fake_find", "args": {"image": "img_0", "label": "x", "bogus": 1}}, "args", "bogus: Extra inputs"),
        ({"tool": "fake_find", "args": {"image": "img_7", "label": "x"}}, "tool", "unknown media id 'img_7'"),
        ({"tool": "echo", "args": {"fail": True}}, "tool", "echo failed: RuntimeError: boom"),
        ({"final": "x", "evidence": ["det_9_9"]}, "final", "cites unknown ids: det_9_9"),
    ],
)
def test_each_failure_becomes_an_error_observation(agent_for, bad, source, fragment):
    plan = [bad, {"tool": "echo", "args": {"text": "recovered"}}, {"final": "done", "evidence": ["obs_1"]}]
    ans = agent_for(plan).ask("q", ["sample:coins"])
    errors = [s for s in ans.trace.steps if isinstance(s, ErrorStep)]
    assert len(errors) == 1
    assert errors[0].source == source
    assert fragment in errors[0].message
    assert ans.status == "answered" and ans.answer == "done"


def test_invalid_planner_output_is_retried(agent_for):
    replies = iter(["this is not json", '{"tool": "echo", "args": {"text": "ok"}}', '{"final": "ok", "evidence": ["obs_1"]}'])
    ans = agent_for(FunctionPlanner(lambda state: next(replies))).ask("q", ["sample:coins"])
    assert ans.status == "answered"
    err = next(s for s in ans.trace.steps if isinstance(s, ErrorStep))
    assert err.source == "planner" and "not a JSON action" in err.message
    assert err.args == {"raw": "this is not json"}


def test_repeated_action_is_detected_and_not_rerun(agent_for):
    calls = []
    # the same call spelled three ways: a default left out, made explicit, keys in another order
    spellings = [{"text": "same"}, {"text": "same", "sleep": 0.0}, {"fail": False, "text": "same"}]

    def planner(state):
        calls.append(len(state.steps))
        if len(calls) <= 3:
            return Action(tool="echo", args=spellings[len(calls) - 1])
        return Final(answer="done", evidence=["obs_1"])

    ans = agent_for(FunctionPlanner(planner)).ask("q", ["sample:coins"])
    assert len(ans.trace.tool_steps()) == 1
    errors = [s for s in ans.trace.steps if isinstance(s, ErrorStep)]
    assert len(errors) == 2
    assert all(e.source == "repeat" and "already called" in e.message and "same" in e.message for e in errors)


def test_bounded_retries_end_the_run(agent_for, tiny_config):
    ans = agent_for(FunctionPlanner(lambda s: "garbage")).ask("q", ["sample:coins"], max_steps=20)
    assert ans.status == "failed"
    assert f"gave up after {tiny_config.limits.max_retries + 1} errors in a row" in ans.error
    assert sum(isinstance(s, ErrorStep) for s in ans.trace.steps) == tiny_config.limits.max_retries + 1


def test_max_steps_without_final(agent_for):
    i = iter(range(100))
    ans = agent_for(FunctionPlanner(lambda s: Action(tool="echo", args={"text": str(next(i))}))).ask(
        "q", ["sample:coins"], max_steps=3
    )
    assert ans.status == "max_steps" and not ans.ok
    assert sum(isinstance(s, PlannerStep) for s in ans.trace.steps) == 3
    assert "within 3 steps" in ans.error


def test_scripted_plan_running_out_fails_the_run(agent_for):
    ans = agent_for([{"tool": "echo", "args": {"text": "a"}}]).ask("q", ["sample:coins"])
    assert ans.status == "failed" and "ran out" in ans.error


def test_tool_timeout(tiny_config):
    cfg = tiny_config.model_copy(deep=True)
    cfg.limits.tool_timeout_s = 0.2
    plan = [{"tool": "echo", "args": {"text": "a", "sleep": 2}}, {"tool": "echo", "args": {"text": "b"}}, {"final": "b", "evidence": ["obs_1"]}]
    ans = Agent(cfg, planner=ScriptedPlanner(plan), tools=FAKE_TOOLS).ask("q", ["sample:coins"])
    err = next(s for s in ans.trace.steps if isinstance(s, ErrorStep))
    assert err.source == "timeout" and "timed out after 0.2 s" in err.message
    assert ans.ok and ans.evidence[0].observation == "b"


def test_out_of_memory_in_a_tool_frees_idle_models_and_retries_once(tiny_config):
    import torch

    from tests.fakes import EchoIn, EchoOut
    from visagent.pool import ModelKey, ModelPool
    from visagent.tools.base import Tool

    class Hungry(Tool):
        name = "hungry"
        description = "Runs out of device memory on its first call (fake, for tests)."
        Input = EchoIn
        Output = EchoOut
        families = ("caption",)
        calls = 0

        def run(self, inp, ctx):  # noqa: ANN001
            type(self).calls += 1
            if type(self).calls == 1 or inp.fail:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")
            return EchoOut(text="fits now")

    pool = ModelPool()
    idle = ModelKey("detect", "tiny:x", "cpu", "float32")
    pool.get(idle, lambda: torch.nn.Linear(2, 2))
    plan = [{"tool": "hungry", "args": {"text": "a"}}, {"tool": "hungry", "args": {"fail": True}}, {"final": "ok", "evidence": ["obs_1"]}]
    ans = Agent(tiny_config, planner=ScriptedPlanner(plan), tools=[Hungry], pool=pool).ask("q", ["sample:coins"])
    first, second = [s for s in ans.trace.steps if isinstance(s, (ToolStep, ErrorStep))]
    assert isinstance(first, ToolStep) and first.observation == "fits now" and not pool.resident(idle)
    # nothing left to evict: the error reaches the planner as an observation
    assert isinstance(second, ErrorStep) and "OutOfMemoryError" in second.message
    assert ans.ok


def test_long_observations_are_clipped(agent_for):
    ans = agent_for([{"tool": "echo", "args": {}}, {"final": "x", "evidence": []}]).ask("q", ["sample:coins"])
    obs = ans.trace.tool_steps()[0].observation
    assert len(obs) <= 500 and obs.endswith("(truncated)")
    assert len(ans.trace.tool_steps()[0].output["text"]) == 2000  # the artifact keeps everything


def test_trace_file_round_trip(agent_for, tmp_path):
    path = tmp_path / "run.jsonl"
    plan = [{"tool": "fake_find", "args": {"image": "img_0", "label": "cat"}}, {"final": "2", "evidence": ["det_1_0"]}]
    ans = agent_for(plan).ask("How many?", ["sample:chelsea"], trace_path=path)
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert lines[0]["type"] == "meta" and lines[-1]["type"] == "answer"
    trace, record = read_trace(path)
    assert trace.steps == ans.trace.steps
    assert trace.meta.question == "How many?" and trace.meta.media[0].source == "sample:chelsea"
    assert record["answer"] == "2" and record["status"] == "answered"
    assert trace.meta.versions["pydantic"] and trace.meta.checkpoints["detect"] == "tiny:grounding-dino"


def test_answer_json_round_trip(agent_for):
    plan = [{"tool": "fake_find", "args": {"image": "img_0", "label": "cat"}}, {"tool": "echo", "args": {"fail": True}}, {"final": "2", "evidence": ["det_1_0", "obs_1"]}]
    ans = agent_for(plan).ask("q", ["sample:chelsea"])
    again = Answer.model_validate_json(ans.model_dump_json())
    assert again == ans
    assert {type(s) for s in again.trace.steps} == {PlannerStep, ToolStep, ErrorStep, FinalStep}


def test_empty_question_and_bad_max_steps_are_usage_errors(agent_for):
    agent = agent_for([{"final": "x"}])
    with pytest.raises(UsageError, match="question is empty"):
        agent.ask("  ", ["sample:coins"])
    with pytest.raises(UsageError, match="max_steps must be at least 1"):
        agent.ask("q", ["sample:coins"], max_steps=0)


def test_parse_action_formats():
    assert parse_action('Thought: look.\n```json\n{"tool": "detect", "args": {"image": "img_0"}}\n```') == Action(
        tool="detect", args={"image": "img_0"}
    )
    assert parse_action('{"final": "3 cups", "evidence": ["det_1_0"], "thought": "t"}') == Final(
        answer="3 cups", evidence=["det_1_0"], thought="t"
    )
    assert parse_action('{"action": "count", "action_input": "{\\"label\\": \\"cup\\"}"}').args == {"label": "cup"}
    for bad in ("", "no json here", "{not json}", '{"args": {}}', '{"tool": "x", "args": [1]}'):
        with pytest.raises(PlannerOutputError):
            parse_action(bad)
    with pytest.raises(PlannerOutputError, match="unknown action format"):
        parse_action("{}", format="nope")


def test_each_run_gets_a_fresh_script(agent_for):
    agent = agent_for([{"tool": "echo", "args": {"text": "a"}}, {"final": "a", "evidence": ["obs_1"]}])
    assert agent.ask("q", ["sample:coins"]).ok and agent.ask("q", ["sample:coins"]).ok


def test_grounding_applies_to_every_planner(agent_for):
    """The agent's policy checks finals whatever the planner: a function planner's uncited final is
    sent back (code no_evidence), a scripted one's is resubmitted and accepted with a warning."""
    replies = iter([Action(tool="echo", args={"text": "3"}), Final(answer="three"), Final(answer="three", evidence=["obs_1"])])
    ans = agent_for(FunctionPlanner(lambda s: next(replies))).ask("How many cups?", ["sample:coffee"])
    err = next(s for s in ans.trace.steps if isinstance(s, ErrorStep))
    assert err.source == "final" and err.code == "no_evidence" and ans.ok and ans.evidence[0].id == "obs_1"
    scripted = agent_for([{"tool": "echo", "args": {"text": "3"}}, {"final": "three"}]).ask("How many cups?", ["sample:coffee"])
    codes = [s.code for s in scripted.trace.steps if isinstance(s, ErrorStep)]
    assert scripted.ok and codes == ["no_evidence"] and scripted.warnings == ["the answer cites no evidence"]