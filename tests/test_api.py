"""The embeddable Python API: Agent.load / ask / stream, async aask / astream, concurrent asks."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tests.fakes import FAKE_TOOLS
from visagent import Agent, Answer
from visagent.errors import MediaError, UsageError
from visagent.planners import FunctionPlanner
from visagent.types import FinalStep, ToolStep

DETECT_PLAN = [
    {"tool": "fake_find", "args": {"image": "img_0", "label": "cup", "n": 2}},
    {"final": "two cups", "evidence": ["det_1_0", "det_1_1"]},
]


def test_public_api_names() -> None:
    import visagent as agent

    for name in ("Agent", "Answer", "Config", "load_config", "ModelPool", "Trace", "Evidence"):
        assert getattr(agent, name) is not None
    with pytest.raises(AttributeError, match="no attribute"):
        agent.NotAThing  # noqa: B018


def test_load_with_profile_and_overrides(tiny_config: Any) -> None:
    a = Agent.load(profile="tiny", planner="script:/nonexistent.yaml", limits={"max_steps": 3})
    assert a.config.profile == "tiny"
    assert a.config.limits.max_steps == 3
    assert a.config.models["caption"].checkpoint == "tiny:blip"
    with pytest.raises(UsageError, match="plan file not found"):
        a.planner  # noqa: B018 - built lazily, fails with a clear message


def test_ask_and_stream(make_agent: Any) -> None:
    agent = make_agent(DETECT_PLAN, tools=FAKE_TOOLS)
    ans = agent.ask("how many cups?", ["sample:coffee"])
    assert isinstance(ans, Answer) and ans.ok
    assert ans.answer == "two cups"
    assert [e.id for e in ans.evidence] == ["det_1_0", "det_1_1"]
    # the fake's box depends on the real image size: coffee is 600x400
    assert ans.evidence[0].region["box"] == [0, 0, 300.0, 200.0]
    run = agent.stream("how many cups?", ["sample:coffee"])
    kinds = [s.type for s in run]
    assert kinds == ["planner", "tool", "planner", "final"]
    assert run.answer is not None and run.answer.answer == "two cups"


def test_bad_input_raises_usage_errors(make_agent: Any) -> None:
    agent = make_agent(DETECT_PLAN, tools=FAKE_TOOLS)
    with pytest.raises(UsageError, match="question is empty"):
        agent.ask("  ", ["sample:coffee"])
    with pytest.raises(MediaError, match="media not found"):
        agent.ask("q", ["/no/such/file.png"])


def test_aask_runs_off_the_event_loop(make_agent: Any) -> None:
    plan = [{"tool": "echo", "args": {"text": "slow", "sleep": 0.3}}, {"final": "done", "evidence": ["obs_1"]}]
    agent = make_agent(plan, tools=FAKE_TOOLS)

    async def main() -> tuple[Answer, int]:
        ticks = 0
        task = asyncio.ensure_future(agent.aask("q", ["sample:coins"]))
        while not task.done():  # the loop keeps ticking while the tool sleeps in a worker
            ticks += 1
            await asyncio.sleep(0.01)
        return await task, ticks

    ans, ticks = asyncio.run(main())
    assert ans.ok and ans.answer == "done"
    assert ans.evidence[0].observation == "slow"
    assert ticks >= 5


def test_astream_yields_steps_then_answer(make_agent: Any) -> None:
    agent = make_agent(DETECT_PLAN, tools=FAKE_TOOLS)

    async def main() -> tuple[list[Any], Any]:
        run = agent.astream("how many cups?", ["sample:coffee"])
        steps = [s async for s in run]
        return steps, run.answer

    steps, answer = asyncio.run(main())
    assert [s.type for s in steps] == ["planner", "tool", "planner", "final"]
    assert isinstance(steps[1], ToolStep) and steps[1].tool == "fake_find"
    assert isinstance(steps[-1], FinalStep)
    assert answer.ok and answer.answer == "two cups"
    assert len(answer.trace.steps) == 4


def test_astream_result_and_bad_media(make_agent: Any) -> None:
    agent = make_agent(DETECT_PLAN, tools=FAKE_TOOLS)

    async def main() -> Answer:
        return await agent.astream("q", ["sample:coffee"]).result()

    assert asyncio.run(main()).answer == "two cups"

    async def bad() -> None:
        async for _ in agent.astream("q", ["sample:nope"]):
            pass

    with pytest.raises(MediaError, match="unknown sample image"):
        asyncio.run(bad())


def test_astream_stops_early_when_the_consumer_leaves(make_agent: Any) -> None:
    calls: list[int] = []

    def plan(state: Any) -> dict[str, Any]:
        calls.append(len(state.steps))
        return {"tool": "echo", "args": {"text": f"t{len(state.steps)}", "sleep": 0.05}}

    agent = make_agent(FunctionPlanner(plan), tools=FAKE_TOOLS)

    async def main() -> list[Any]:
        got = []
        run = agent.astream("q", ["sample:coins"], max_steps=50)
        async for step in run:
            got.append(step)
            if len(got) == 2:
                break
        await run.aclose()
        await asyncio.sleep(0.4)  # the worker notices at the next step boundary
        return got

    got = asyncio.run(main())
    assert len(got) == 2
    assert len(calls) < 10, f"the run went on after the consumer left: {len(calls)} planner calls"


def test_concurrent_asks_share_one_pool(make_agent: Any) -> None:
    agent = make_agent(
        [{"tool": "echo", "args": {"text": "x", "sleep": 0.05}}, {"final": "ok", "evidence": ["obs_1"]}],
        tools=FAKE_TOOLS,
    )
    with ThreadPoolExecutor(8) as ex:
        answers = list(ex.map(lambda i: agent.ask(f"q{i}", ["sample:coins"]), range(16)))
    assert all(a.ok and a.answer == "ok" for a in answers)
    assert len({a.trace.meta.run_id for a in answers}) == 16  # each run its own trace

    async def many() -> list[Answer]:
        return await asyncio.gather(*(agent.aask(f"q{i}", ["sample:coins"]) for i in range(16)))

    answers = asyncio.run(many())
    assert all(a.ok for a in answers)
    assert [a.trace.meta.question for a in answers] == [f"q{i}" for i in range(16)]
    # the runs were in flight together: some tool calls' [start, end] intervals overlap
    spans = sorted((s.ts - s.ms / 1000, s.ts) for a in answers for s in a.trace.tool_steps())
    assert len(spans) == 16
    assert any(later[0] < earlier[1] for earlier, later in zip(spans, spans[1:]))


def test_real_segment_tool_concurrent_asks_load_sam_once(make_agent: Any, shared_pool: Any) -> None:
    """fake boxes -> the real segment tool on the tiny SAM; 6 concurrent runs, one model copy."""
    from visagent.tools.segment import Segment

    plan = [
        {"tool": "fake_find", "args": {"image": "img_0", "label": "cup", "n": 1}},
        {"tool": "segment", "args": {"image": "img_0", "boxes": ["det_1_0"]}},
        {"final": "a cup", "evidence": ["mask_2_0"]},
    ]
    agent = make_agent(plan, tools=[*FAKE_TOOLS, Segment])
    errors: list[BaseException] = []

    def one(i: int) -> Answer:
        try:
            return agent.ask(f"segment {i}", ["sample:coffee"])
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
            raise

    threads_before = threading.active_count()
    with ThreadPoolExecutor(6) as ex:
        answers = list(ex.map(one, range(6)))
    assert not errors
    for ans in answers:
        assert ans.ok, ans.error
        ev = ans.evidence[0]
        assert ev.tool == "segment" and ev.kind == "region"
        assert len(ev.region["box"]) == 4
    sams = [m for m in shared_pool.stats()["models"] if m["family"] == "segment"]
    assert len(sams) == 1 and sams[0]["loads"] == 1
    # every run's image went through the model: concurrent calls may share one batched forward
    ops = sams[0]["batching"]["ops"]
    assert ops and all(op["items"] >= 6 for op in ops.values()), ops
    assert 1 <= sams[0]["uses"] <= sum(op["batches"] for op in ops.values())
    assert threading.active_count() - threads_before < 40


def test_answers_and_evidence_print_compactly(make_agent: Any) -> None:
    """A mask's RLE runs to kilobytes: ``print(answer)`` / ``print(ev)`` and their reprs leave it out."""
    plan = [{"tool": "segment", "args": {"image": "img_0", "boxes": [[100, 50, 400, 350]]}}, {"final": "one cup", "evidence": ["mask_1_0"]}]
    answer = make_agent(plan).ask("Segment the cup", ["sample:coffee"])
    ev = answer.evidence[0]
    assert len(ev.region["rle"]["counts"]) > 200  # the data is all there
    assert str(answer) == "answered: 'one cup' citing mask_1_0"
    assert str(ev) == ev.describe() and str(ev).startswith("mask_1_0 (segment, img_0)")
    for text in (repr(ev), repr(answer)):
        assert ev.region["rle"]["counts"] not in text and len(text) < 600, text
    assert "<rle 400x600>" in repr(ev) and "evidence=['mask_1_0']" in repr(answer) and "steps>" in repr(answer)


def test_load_takes_the_profile_from_the_environment(monkeypatch: Any) -> None:
    monkeypatch.setenv("VISAGENT_PROFILE", "tiny")
    assert Agent.load().config.profile == "tiny"
    assert Agent.load(profile="default").config.profile == "default"
