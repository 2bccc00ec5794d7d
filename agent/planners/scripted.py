"""Planners for tests and scripted runs: a fixed plan, or a Python function.

Scripted plan format (YAML or JSON): a list of steps, each ``{tool: NAME, args: {...}}`` or
``{final: TEXT, evidence: [IDS]}`` (a top-level mapping with a ``plan`` key is accepted too).

A list of such lists is one plan per turn of a session (like a scenario's ``plan``): turn k (the
session's k-th question, 1-based) follows plan k. A single plan is followed by every turn.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import TypeAdapter, ValidationError

from visagent.errors import PlannerOutputError, RunError, UsageError
from visagent.planners.base import PlannerState
from visagent.planners.parsing import decision_from_dict, parse_action
from visagent.safe import MAX_FILE_BYTES, BoundsError, load_json, load_yaml, read_text
from visagent.types import Action, Decision, ErrorStep, Final, PlannerReply

_decision = TypeAdapter(Decision)


def plan_from_data(data: Any, origin: str = "plan") -> list[Action | Final]:
    """Validate a scripted plan (list of dicts, Actions or Finals)."""
    if isinstance(data, dict) and "plan" in data:
        data = data["plan"]
    if not isinstance(data, list) or not data:
        raise UsageError(f"{origin}: a scripted plan must be a non-empty list of steps")
    steps: list[Action | Final] = []
    for i, item in enumerate(data):
        if isinstance(item, (Action, Final)):
            steps.append(item)
            continue
        if not isinstance(item, dict):
            raise UsageError(f"{origin}: step {i + 1} must be a mapping like {{tool: NAME, args: {{...}}}}")
        unknown = set(item) - {"tool", "args", "final", "evidence", "thought"}
        if unknown:
            raise UsageError(f"{origin}: step {i + 1} has unknown keys: {', '.join(sorted(unknown))}")
        if "tool" not in item and "final" not in item:
            raise UsageError(f"{origin}: step {i + 1} needs `tool` or `final`")
        try:
            steps.append(decision_from_dict(item))
        except PlannerOutputError as exc:
            raise UsageError(f"{origin}: step {i + 1}: {exc}") from None
    return steps


def plans_from_data(data: Any, origin: str = "plan") -> list[list[Action | Final]]:
    """One validated plan per turn: ``data`` is a plan, or a list of plans (a list of lists)."""
    if isinstance(data, dict) and "plan" in data:
        data = data["plan"]
    if isinstance(data, list) and data and all(isinstance(p, list) for p in data):
        return [plan_from_data(p, f"{origin}: plan of turn {k + 1}") for k, p in enumerate(data)]
    return [plan_from_data(data, origin)]


def load_plan(path: str | Path) -> list[Action | Final]:
    """The plan in a plan file (the first turn's, for a file with one plan per turn)."""
    return load_plans(path)[0]


def load_plans(path: str | Path) -> list[list[Action | Final]]:
    """The plans in a plan file: one, or one per turn."""
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"plan file not found: {p}")
    try:
        text = read_text(p, "plan file")
        data = load_json(text, f"plan file {p}", max_chars=MAX_FILE_BYTES) if p.suffix == ".json" else load_yaml(text, f"plan file {p}")
    except BoundsError as exc:
        raise UsageError(str(exc)) from None
    except (yaml.YAMLError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"plan file {p} cannot be parsed: {str(exc).splitlines()[0]}") from None
    return plans_from_data(data, str(p))


class ScriptedPlanner:
    """Returns the plan's steps in order, whatever the observations. Running out is a run error.

    With one plan per turn (``plans``), a run follows the plan of its turn (the number of turns in
    ``state.history`` before it); a turn past the last plan is a run error.

    When the grounding policy sends a final back for citing nothing (code ``no_evidence``), the
    plan's next step follows (e.g. a revised final); a plan that has none submits the same final
    again, which the policy then accepts with a warning."""

    name = "script"

    def __init__(self, plan: Sequence[Action | Final | dict[str, Any]] | str | Path) -> None:
        if isinstance(plan, (str, Path)):
            self.plans = load_plans(plan)
            self.name = f"script:{plan}"
        else:
            self.plans = plans_from_data(list(plan))
        self.plan = self.plans[0]
        self._turn: int | None = None
        self._pos = 0
        self._lock = threading.Lock()

    def fork(self) -> "ScriptedPlanner":
        """A fresh copy at the start of the plan (each run gets its own)."""
        twin = ScriptedPlanner(self.plans if len(self.plans) > 1 else self.plan)
        twin.name = self.name
        return twin

    def _follow(self, state: PlannerState) -> None:
        """Take the plan of this run's turn (once, at its first step)."""
        if self._turn is not None or len(self.plans) == 1:
            return
        turn = len(state.history)
        if turn >= len(self.plans):
            raise RunError(f"the scripted plan has plans for {len(self.plans)} turns; this is turn {turn + 1}")
        self._turn = turn
        self.plan = self.plans[turn]

    def next(self, state: PlannerState) -> PlannerReply:
        self._follow(state)
        last = state.steps[-1] if state.steps else None
        if isinstance(last, ErrorStep) and last.code == "no_evidence" and self._pos == len(self.plan) and isinstance(self.plan[-1], Final):
            decision = self.plan[-1]
            return PlannerReply(decision=decision, raw=decision.model_dump_json())
        with self._lock:
            if self._pos >= len(self.plan):
                raise RunError(f"the scripted plan ran out after {len(self.plan)} steps without a final answer")
            decision = self.plan[self._pos]
            self._pos += 1
        return PlannerReply(decision=decision, raw=decision.model_dump_json())


class FunctionPlanner:
    """Calls ``fn(state)``, which returns an Action, a Final, a dict or JSON text."""

    name = "function"

    def __init__(self, fn: Callable[[PlannerState], Any]) -> None:
        self.fn = fn

    def next(self, state: PlannerState) -> PlannerReply:
        out = self.fn(state)
        if isinstance(out, PlannerReply):
            return out
        if isinstance(out, (Action, Final)):
            return PlannerReply(decision=out, raw=out.model_dump_json())
        if isinstance(out, str):
            return PlannerReply(decision=parse_action(out), raw=out)
        if isinstance(out, dict):
            try:
                return PlannerReply(decision=decision_from_dict(out), raw=json.dumps(out, default=str))
            except ValidationError as exc:
                raise PlannerOutputError(str(exc)) from None
        raise PlannerOutputError(f"planner function returned {type(out).__name__}, not an action")
