"""Grounded finals (evidence required, count cross-check) and multi-turn conversations."""

from __future__ import annotations

from typing import Any

import pytest

from tests.fakes import FAKE_TOOLS
from visagent.grounding import GroundingPolicy, answer_number
from visagent.planners import FunctionPlanner, ScriptedPlanner
from visagent.tools.base import Region, Tool, ToolInput, ToolOutput
from visagent.types import ErrorStep, Final, NoteStep, PlannerStep, ToolStep


class CountIn(ToolInput):
    image: str
    label: str
    n: int = 3


class CountOut(ToolOutput):
    label: str
    count: int
    detections: list[Region]

    def observation(self) -> str:
        return f"counted {self.count} {self.label!r}: " + ", ".join(d.id for d in self.detections)


class FakeCount(Tool):
    name = "count"
    description = "Count objects of a label (fake, for tests)."
    Input = CountIn
    Output = CountOut

    def run(self, inp: CountIn, ctx: Any) -> CountOut:
        dets = [Region(id=ctx.region_id("det", i), image=inp.image, box=[i, i, i + 10, i + 10], label=inp.label) for i in range(inp.n)]
        return CountOut(label=inp.label, count=inp.n, detections=dets)


TOOLS = [*FAKE_TOOLS, FakeCount]
COUNT = {"tool": "count", "args": {"image": "img_0", "label": "cup", "n": 3}}


@pytest.mark.parametrize(
    ("text", "number"),
    [("There are 3 cups.", 3), ("three cups (det_1_0)", 3), ("12 coins, see [1, 2, 3, 4]", 12), ("No cups.", 0), ("a cup", None), ("det_2_0 has 4", 4)],
)
def test_answer_number(text: str, number: float | None) -> None:
    assert answer_number(text) == number


def test_count_mismatch_is_marked_in_answer_and_trace(make_agent: Any) -> None:
    agent = make_agent([COUNT, {"final": "There are 5 cups.", "evidence": ["det_1_0"]}], tools=TOOLS)
    answer = agent.ask("How many cups are there?", ["sample:coffee"])
    assert answer.ok and answer.answer == "There are 5 cups."  # never changed
    assert answer.warnings == ["count cross-check: the answer says 5 but the count tool (obs_1) counted 3 'cup'"]
    notes = [s for s in answer.trace.steps if isinstance(s, NoteStep)]
    assert notes and notes[-1].message == "warning: " + answer.warnings[0]
    assert answer.trace.steps[-1].type == "final" and notes[-1].index == answer.trace.steps[-1].index - 1


def test_count_match_has_no_warning(make_agent: Any) -> None:
    agent = make_agent([COUNT, {"final": "I see three cups.", "evidence": ["det_1_0", "det_1_1", "det_1_2"]}], tools=TOOLS, grounding=GroundingPolicy(require_evidence=False))
    answer = agent.ask("How many cups are there?", ["sample:coffee"])
    assert answer.ok and answer.warnings == []
    assert not any(isinstance(s, NoteStep) for s in answer.trace.steps)


def test_count_without_number_is_marked(make_agent: Any) -> None:
    agent = make_agent([COUNT, {"final": "Some cups.", "evidence": ["obs_1"]}], tools=TOOLS, grounding=GroundingPolicy(require_evidence=False))
    answer = agent.ask("How many cups are there?", ["sample:coffee"])
    assert answer.warnings and "states no number" in answer.warnings[0] and "counted 3" in answer.warnings[0]


def test_ungrounded_final_is_sent_back_then_accepted_with_warning(make_agent: Any) -> None:
    plan = [COUNT, {"final": "3 cups", "evidence": []}, {"final": "3 cups", "evidence": ["det_1_0"]}]
    answer = make_agent(plan, tools=TOOLS).ask("How many cups?", ["sample:coffee"])
    errors = [s for s in answer.trace.steps if isinstance(s, ErrorStep)]
    assert [e.source for e in errors] == ["final"] and "cites no evidence" in errors[0].message
    assert answer.ok and [e.id for e in answer.evidence] == ["det_1_0"]
    # bounded: a planner that keeps citing nothing gets its answer through, marked
    stubborn = [COUNT, {"final": "3 cups", "evidence": []}, {"final": "3 cups", "evidence": []}]
    answer = make_agent(stubborn, tools=TOOLS, grounding=GroundingPolicy(count_check=False, max_sendbacks=1)).ask("How many cups?", ["sample:coffee"])
    assert answer.ok and answer.warnings == ["the answer cites no evidence"]
    # at the last allowed step there is no turn left to fix it: accepted at once, marked
    last = make_agent([COUNT, {"final": "3 cups", "evidence": []}], tools=TOOLS)
    answer = last.ask("How many cups?", ["sample:coffee"], max_steps=2)
    assert answer.ok and answer.warnings == ["the answer cites no evidence"]
    assert not [s for s in answer.trace.steps if isinstance(s, ErrorStep)]


def test_question_without_tools_needs_no_evidence(make_agent: Any) -> None:
    answer = make_agent([{"final": "hello", "evidence": []}], tools=TOOLS).ask("Hi, are you ready?", ["sample:coffee"])
    assert answer.ok and not answer.warnings
    answer = make_agent([{"final": "a cup", "evidence": []}, {"final": "a cup", "evidence": []}], tools=TOOLS).ask(
        "Where is the cup?", ["sample:coffee"]
    )
    assert [s.source for s in answer.trace.steps if isinstance(s, ErrorStep)] == ["final"]


def test_unknown_ids_are_sent_back(make_agent: Any) -> None:
    plan = [COUNT, {"final": "3", "evidence": ["det_9_9"]}, {"final": "3", "evidence": ["det_1_2"]}]
    answer = make_agent(plan, tools=TOOLS).ask("How many cups?", ["sample:coffee"])
    assert "unknown ids: det_9_9" in [s for s in answer.trace.steps if isinstance(s, ErrorStep)][0].message
    assert answer.ok


# -- multi-turn ---------------------------------------------------------------------------------
def test_conversation_refers_to_earlier_ids(make_agent: Any) -> None:
    agent = make_agent([{"final": "unused"}], tools=TOOLS)
    conv = agent.chat(["sample:coffee"])
    first = conv.ask("Find the cups", planner=ScriptedPlanner([{"tool": "fake_find", "args": {"image": "img_0", "label": "cup"}}, {"final": "two cups", "evidence": ["det_1_0", "det_1_1"]}]))
    assert first.ok

    seen: dict[str, Any] = {}

    def second_turn(state: Any) -> Any:
        seen.setdefault("history", state.history)
        if not any(isinstance(s, ToolStep) for s in state.steps):
            # "now segment the second one": use the earlier detection id as a tool input
            return {"tool": "fake_find", "args": {"image": "img_0", "label": "handle", "n": 1}}
        return Final(answer="the second cup has a handle", evidence=["det_1_1", "det_2_0"])

    second = conv.ask("Now look at the second one", planner=FunctionPlanner(second_turn))
    assert second.ok
    hist = seen["history"][0]
    assert hist["question"] == "Find the cups" and hist["answer"] == "two cups"
    assert hist["evidence"] == ["det_1_0", "det_1_1"] and hist["regions"] == ["det_1_0", "det_1_1"]
    # call numbers continue across turns: the second turn's first call is call 2
    assert [s.call for s in second.trace.steps if isinstance(s, ToolStep)] == [2]
    by_id = {e.id: e for e in second.evidence}
    assert by_id["det_1_1"].step == -1 and "det_1_1" in by_id["det_1_1"].observation
    assert by_id["det_2_0"].step >= 0 and by_id["det_2_0"].tool == "fake_find"
    assert second.trace.meta.turns == ["Find the cups", "Now look at the second one"]
    assert conv.media.ids() == ["img_0"] and len(conv.turns) == 2


def test_conversation_earlier_region_as_tool_input(make_agent: Any) -> None:
    class UseIn(ToolInput):
        region: str

    class UseOut(ToolOutput):
        box: list[float]

        def observation(self) -> str:
            return f"box {self.box}"

    class UseRegion(Tool):
        name = "use_region"
        description = "Look up a region id from any earlier step (fake)."
        Input = UseIn
        Output = UseOut

        def run(self, inp: UseIn, ctx: Any) -> UseOut:
            return UseOut(box=ctx.region(inp.region).box)

    agent = make_agent([{"final": "x"}], tools=[*TOOLS, UseRegion])
    conv = agent.chat(["sample:coffee"])
    conv.ask("count cups", planner=ScriptedPlanner([COUNT, {"final": "3", "evidence": ["det_1_1"]}]))
    ans = conv.ask("segment the second one", planner=ScriptedPlanner([{"tool": "use_region", "args": {"region": "det_1_1"}}, {"final": "done", "evidence": ["obs_2"]}]))
    step = [s for s in ans.trace.steps if isinstance(s, ToolStep)][0]
    assert step.output["box"] == [1.0, 1.0, 11.0, 11.0]
    assert [p.action.kind for p in ans.trace.steps if isinstance(p, PlannerStep)] == ["action", "final"]


def test_chat_command_repl(tmp_path: Any) -> None:
    import json

    from typer.testing import CliRunner

    from visagent.cli import app

    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps([{"final": "hello there", "evidence": []}]))
    result = CliRunner().invoke(
        app,
        ["chat", "sample:coffee", "--profile", "tiny", "--planner", f"script:{plan}", "--trace-dir", str(tmp_path / "t")],
        input="hi\n/ids\nhello again\n/quit\n",
    )
    assert result.exit_code == 0, result.output
    assert result.output.count("hello there") == 2
    assert "no region ids yet" in result.output
    assert sorted(p.name for p in (tmp_path / "t").iterdir()) == ["turn-1.jsonl", "turn-2.jsonl"]
