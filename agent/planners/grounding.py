"""Grounded finals: checks run on every final answer before the run accepts it.

A check is ``fn(final, run) -> error text | None`` (``Agent(final_checks=[...])``): error text is
sent back to the planner as an error step (the loop's retry bound applies); ``None`` accepts.
Checks may add to ``run.warnings``: each warning is recorded as a ``NoteStep`` ("warning: ...")
before the final step and copied into ``Answer.warnings``.

- ``evidence_check``: a final that cites nothing, for a question that needed tools (a tool ran in
  this run, or the question asks to count, locate, read, segment ...), is sent back
  ``max_sendbacks`` times (default 1) while steps are left; after that it is accepted with a warning.
  (Unknown ids are always sent back by the loop itself.)
- ``count_check``: when a count tool ran, the first number in the answer (digits or a number word
  up to twenty; region ids and bracketed boxes ignored) is compared with the tool's ``count``. A
  mismatch, or no number at all, adds a warning naming both values; the answer is never changed.

``default_checks()`` returns both. ``final_rules`` tells a constrained planner what a final answer
may look like at a given step, so that its grammar never offers a final the evidence check would
send back.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

from agent.types import ErrorStep, Final, ToolStep

FinalCheck = Callable[[Final, Any], "str | None"]

NEEDS_TOOLS_RE = re.compile(
    r"\b(how many|count|number of|where|locate|find|detect|segment|mask|box|read|text|written|say|says|"
    r"which|what color|left|right|biggest|largest|smallest|video|frame|happen)\b",
    re.I,
)
_IDS_RE = re.compile(r"\b(?:(?:det|mask|ocr)_\d+_\d+|obs_\d+|img_\d+|vid_\d+)\b")
_BRACKETS_RE = re.compile(r"\[[^\]]*\]")
_NUMBER_RE = re.compile(r"(?<![\w.])\d+(?:\.\d+)?(?!\w)")
_WORDS = {
    w: i
    for i, w in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
        "sixteen seventeen eighteen nineteen twenty".split()
    )
}
_WORDS.update({"no": 0, "none": 0, "a single": 1, "single": 1})
_WORD_RE = re.compile(r"\b(" + "|".join(sorted(map(re.escape, _WORDS), key=len, reverse=True)) + r")\b", re.I)


def answer_number(text: str) -> float | None:
    """The first number an answer states (``"There are 3 cups"`` -> 3, ``"two"`` -> 2), or None."""
    clean = _BRACKETS_RE.sub(" ", _IDS_RE.sub(" ", text))
    digit = _NUMBER_RE.search(clean)
    word = _WORD_RE.search(clean)
    if digit and (not word or digit.start() <= word.start()):
        return float(digit.group(0))
    if word:
        return float(_WORDS[word.group(1).lower()])
    return None


def tool_counts(run: Any, count_tools: Sequence[str] = ("count",)) -> list[tuple[int, str, int]]:
    """``[(call, label, count)]`` of the count tool calls of a run (``output["count"]`` ints)."""
    out = []
    for step in run.trace.steps:
        if isinstance(step, ToolStep) and step.tool in count_tools:
            count = step.output.get("count")
            if isinstance(count, int):
                out.append((step.call, str(step.output.get("label", "")), count))
    return out


def _warn(run: Any, message: str) -> None:
    warnings = run.warnings
    if message not in warnings:
        warnings.append(message)


def count_check(count_tools: Sequence[str] = ("count",)) -> FinalCheck:
    """Warn when the final answer's number differs from what a count tool counted."""

    def check(final: Final, run: Any) -> str | None:
        counts = tool_counts(run, count_tools)
        if not counts:
            return None
        relevant = [c for c in counts if c[1] and c[1].lower() in final.answer.lower()] or counts
        call, label, expected = relevant[-1]
        said = answer_number(final.answer)
        what = f"{label!r} " if label else ""
        if said is None:
            _warn(run, f"count cross-check: the answer states no number; the count tool (obs_{call}) counted {expected} {what}".rstrip())
        elif all(said != c[2] for c in relevant):
            _warn(
                run,
                f"count cross-check: the answer says {said:g} but the count tool (obs_{call}) counted {expected} {what}".rstrip(),
            )
        return None

    return check


def needs_tools(question: str, run: Any) -> bool:
    """Whether a question needed tools: a tool ran in this run, or it asks to count/locate/read."""
    if any(isinstance(s, ToolStep) for s in run.trace.steps):
        return True
    return bool(NEEDS_TOOLS_RE.search(question))


NO_EVIDENCE = "the final answer cites no evidence"


def final_rules(state: Any, known_ids: Sequence[str]) -> tuple[bool, bool]:
    """``(allow_final, require_evidence)`` for the next action of a constrained planner.

    Mirrors ``evidence_check``: with citable ids a final must cite at least one; with none, a final
    to a question that needs tools is not offered (the planner calls a tool first) until the last
    allowed step or once a final was sent back for citing nothing; the check then accepts it with
    a warning.
    """
    if any(isinstance(s, ErrorStep) and s.message.startswith(NO_EVIDENCE) for s in state.steps):
        return True, False
    if known_ids:
        return True, True
    if state.step + 1 >= state.max_steps:
        return True, False
    return not NEEDS_TOOLS_RE.search(state.question), False


def evidence_check(max_sendbacks: int = 1) -> FinalCheck:
    """Send back (bounded) a final answer that cites no evidence for a question that needed tools."""

    def check(final: Final, run: Any) -> str | None:
        if final.evidence or not run.agent.tools or not needs_tools(run.question, run):
            return None
        sent = getattr(run, "_ungrounded_sendbacks", 0)
        steps_left = run.max_steps - getattr(run, "step_number", 0) - 1
        if sent < max_sendbacks and steps_left > 0:  # at the last step there is no turn left to fix it
            run._ungrounded_sendbacks = sent + 1
            ran = any(isinstance(s, ToolStep) for s in run.trace.steps)
            hint = "cite the ids of the observations that support it" if ran else "call a tool first, then cite its ids"
            return f"{NO_EVIDENCE}: {hint} (region ids like det_1_0, or obs_N)"
        _warn(run, "the answer cites no evidence")
        return None

    return check


def default_checks() -> list[FinalCheck]:
    """``[evidence_check(), count_check()]``."""
    return [evidence_check(), count_check()]
