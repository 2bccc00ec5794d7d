"""Per-step framework overhead of the agent loop.

A scripted run of N steps with a no-op tool, against a bare Python loop that validates and records
the same steps (pydantic validation of the action and the tool input, the tool call, a step
record). Both measured in this one run; prints ms/step for each and the overhead per step.
With a per-tool timeout each tool call is handed to a worker thread; that mode's bare loop does
the same hand-off (a thread pool's submit + result), so its overhead is the framework's alone and
the hand-off itself (the operating system's thread switch) is printed on its own line.

    python -m benchmarks.loop_overhead [--repeats 30] [--json out.json]
"""

from __future__ import annotations

import argparse
import concurrent.futures as futures
import json
import statistics
import time

from tests.fakes import Noop
from visagent.agent import Agent
from visagent.config import load_config
from visagent.planners import FunctionPlanner
from visagent.types import Action, Final, PlannerReply, ToolStep


def planner_for(n: int) -> FunctionPlanner:
    replies = [PlannerReply(decision=Action(tool="noop", args={"i": i})) for i in range(n)]
    replies.append(PlannerReply(decision=Final(answer="done", evidence=[f"obs_{n}"] if n else [])))
    it = iter(replies)
    return FunctionPlanner(lambda state: next(it))


_AGENTS: dict[float | None, Agent] = {}


def agent_run(n: int, timeout: float | None) -> float:
    """One scripted run of ``n`` tool steps on a long-lived agent (as an application keeps one)."""
    if timeout not in _AGENTS:
        cfg = load_config(profile="tiny", overrides={"limits": {"tool_timeout_s": timeout, "max_steps": 64}})
        _AGENTS[timeout] = Agent(cfg, tools=[Noop])
    agent = _AGENTS[timeout]
    image = __import__("numpy").zeros((8, 8, 3), "uint8")
    planner = planner_for(n)
    t0 = time.perf_counter()
    ans = agent.ask("q", [image], planner=planner)
    dt = time.perf_counter() - t0
    assert ans.ok and len(ans.trace.tool_steps()) == n
    return dt


def bare_run(n: int, pool: futures.ThreadPoolExecutor | None = None) -> float:
    """The same work without the framework: validate, call (on ``pool`` when given), record."""
    replies = [PlannerReply(decision=Action(tool="noop", args={"i": i})) for i in range(n)]
    tool = Noop()
    t0 = time.perf_counter()
    steps = []
    for i, reply in enumerate(replies):
        action = reply.decision
        inp = Noop.Input.model_validate(action.args)
        out = tool.run(inp, None) if pool is None else pool.submit(tool.run, inp, None).result(timeout=300)
        steps.append(ToolStep(call=i + 1, tool=action.tool, args=action.args, observation=out.observation(), output=out.model_dump(mode="json")))
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--json", dest="json_path")
    args = ap.parse_args()
    rows = []
    pool = futures.ThreadPoolExecutor(max_workers=1)
    for n in (10, 50):
        for timeout, label in ((None, "inline tools"), (300.0, "tools with timeout (thread)")):
            bare_pool = None if timeout is None else pool
            agent_run(n, timeout)  # warm up
            bare_run(n, bare_pool)
            a = statistics.median(agent_run(n, timeout) for _ in range(args.repeats)) / n * 1000
            b = statistics.median(bare_run(n, bare_pool) for _ in range(args.repeats)) / n * 1000
            rows.append({"steps": n, "mode": label, "agent_ms_per_step": a, "bare_ms_per_step": b, "overhead_ms_per_step": a - b, "ratio": a / b})
    inline = statistics.median(bare_run(50) for _ in range(args.repeats))
    handed = statistics.median(bare_run(50, pool) for _ in range(args.repeats))
    handoff = (handed - inline) / 50 * 1000
    print(f"{'steps':>5}  {'mode':28s} {'agent ms/step':>13} {'bare ms/step':>12} {'overhead':>9} {'ratio':>6}")
    for r in rows:
        print(f"{r['steps']:>5}  {r['mode']:28s} {r['agent_ms_per_step']:13.4f} {r['bare_ms_per_step']:12.4f} {r['overhead_ms_per_step']:9.4f} {r['ratio']:6.2f}")
    print(f"thread hand-off alone (bare loop, submit + result per call): {handoff:.4f} ms/step")
    print("(per-run fixed costs — media validation, trace metadata — are included and spread over the steps)")
    if args.json_path:
        with open(args.json_path, "w") as fh:
            json.dump({"rows": rows, "thread_handoff_ms_per_step": handoff}, fh, indent=2)


if __name__ == "__main__":
    main()
