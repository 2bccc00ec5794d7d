"""Grounding: the policy every final answer passes before the run accepts it, whatever the planner.

``GroundingPolicy`` is owned by the agent (``Agent(grounding=...)``, default ``GroundingPolicy()``);
its per-run state is explicit (``GroundingState``: send-backs so far, warnings). For each final:

- unknown ids (cited ids no tool produced) are sent back (code ``unknown_ids``; the loop's retry
  bound applies);
- evidence: a final that cites nothing, for a question that needed tools (a tool ran in this run,
  or the question asks to count, locate, read, segment ...), is sent back ``max_sendbacks`` times
  (default 1) while steps are left (code ``no_evidence``); after that it is accepted with a warning;
- count cross-check: when a count tool ran, the first number in the answer (digits or a number
  word up to twenty; region ids and bracketed boxes ignored) is compared with the tool's
  ``count``. A mismatch, or no number at all, adds a warning naming both values; the answer is
  never changed;
- track cross-check: when a track tool ran and the question asks for a number ("how many",
  "count", "number of"), the answer's number is compared with the distinct count of the last track
  call (the count of a label the answer names, else the total over its labels); a mismatch or no
  number adds a warning, and the count cross-check stays quiet (per-frame counts are not distinct
  counts). A distinct-count question about a video ("how many people walked past", "how many
  different cars", ...) answered without any track call adds a warning that per-frame counts count
  an object once per frame;
- extra checks, ``fn(final, run) -> error text | None`` (``Agent(final_checks=[...])``): error text
  is sent back (code ``grounding``).

Warnings are recorded as ``NoteStep``s ("warning: ...") before the final step and copied into
``Answer.warnings``. ``final_rules`` tells a constrained planner what a final answer may look like
at a given step, so that its grammar never offers a final the evidence check would send back.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from visagent import ids
from visagent.types import ErrorStep, Final, ToolStep

FinalCheck = Callable[[Final, Any], "str | None"]

NEEDS_TOOLS_RE = re.compile(
    r"\b(how many|count|number of|where|locate|find|detect|segment|mask|box|read|text|written|say|says|"
    r"which|what color|left|right|biggest|largest|smallest|video|frame|happen)\b",
    re.I,
)
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
    clean = _BRACKETS_RE.sub(" ", ids.any_id_in_text_re().sub(" ", text))
    digit = _NUMBER_RE.search(clean)
    word = _WORD_RE.search(clean)
    if digit and (not word or digit.start() <= word.start()):
        return float(digit.group(0))
    if word:
        return float(_WORDS[word.group(1).lower()])
    return None


def tool_counts(steps: Sequence[Any], count_tools: Sequence[str] = ("count",)) -> list[tuple[int, str, int]]:
    """``[(call, label, count)]`` of the count tool calls among ``steps`` (``output["count"]`` ints)."""
    out = []
    for step in steps:
        if isinstance(step, ToolStep) and step.tool in count_tools:
            count = step.output.get("count")
            if isinstance(count, int):
                out.append((step.call, str(step.output.get("label", "")), count))
    return out


COUNT_QUESTION_RE = re.compile(r"\b(how many|count|number of)\b", re.IGNORECASE)
#: a count of objects over time rather than in one picture
DISTINCT_RE = re.compile(
    r"\b(walk(?:ed|s|ing)? (?:past|by|through|in|out)|pass(?:ed|es|ing)?|went (?:by|past|through)|go(?:es)? (?:by|past)|"
    r"cross(?:ed|es|ing)?|enter(?:ed|s|ing)?|left|leav(?:e|es|ing)|came|come|appear(?:ed|s)?|distinct|different|unique|"
    r"individual|in total|total|altogether|overall|over time|throughout|during)\b",
    re.IGNORECASE,
)


def track_counts(
    steps: Sequence[Any], track_tools: Sequence[str] = ("track",)
) -> list[tuple[int, dict[str, int], int, int]]:
    """``[(call, counts per label, total, min_track_length)]`` of the track tool calls among ``steps``."""
    out = []
    for step in steps:
        if isinstance(step, ToolStep) and step.tool in track_tools:
            counts = step.output.get("counts")
            if isinstance(counts, dict) and all(isinstance(v, int) for v in counts.values()):
                total = step.output.get("count")
                total = total if isinstance(total, int) else sum(counts.values())
                min_len = step.output.get("min_track_length")
                min_len = int(min_len) if isinstance(min_len, int) else 1
                out.append((step.call, {str(k): v for k, v in counts.items()}, total, min_len))
    return out


def is_distinct_count_question(question: str) -> bool:
    """A count question about objects over time ("how many people walked past the door?")."""
    return bool(COUNT_QUESTION_RE.search(question) and DISTINCT_RE.search(question))


def needs_tools(question: str, steps: Sequence[Any]) -> bool:
    """Whether a question needed tools: a tool ran in this run, or it asks to count/locate/read."""
    if any(isinstance(s, ToolStep) for s in steps):
        return True
    return bool(NEEDS_TOOLS_RE.search(question))


NO_EVIDENCE = "the final answer cites no evidence"


def final_rules(state: Any, known_ids: Sequence[str]) -> tuple[bool, bool]:
    """``(allow_final, require_evidence)`` for the next action of a constrained planner.

    Mirrors the evidence check: with citable ids a final must cite at least one; with none, a final
    to a question that needs tools is not offered (the planner calls a tool first) until the last
    allowed step or once a final was sent back for citing nothing; the check then accepts it with
    a warning.
    """
    if any(isinstance(s, ErrorStep) and s.code == "no_evidence" for s in state.steps):
        return True, False
    if known_ids:
        return True, True
    if state.step + 1 >= state.max_steps:
        return True, False
    return not NEEDS_TOOLS_RE.search(state.question), False


@dataclass
class GroundingState:
    """One run's grounding state: how many finals were sent back for citing nothing, the warnings."""

    sendbacks: int = 0
    warnings: list[str] = field(default_factory=list)

    def warn(self, message: str) -> None:
        if message not in self.warnings:
            self.warnings.append(message)


@dataclass(frozen=True)
class Verdict:
    """A final sent back: ``code`` (``unknown_ids``, ``no_evidence``, ``grounding``) and the message
    the planner sees."""

    code: str
    message: str


class GroundingPolicy:
    """Checks finals (see module docstring). ``require_evidence=False`` and ``count_check=False``
    turn those checks off; ``checks`` adds ``fn(final, run) -> error text | None`` checks."""

    def __init__(
        self,
        *,
        require_evidence: bool = True,
        max_sendbacks: int = 1,
        count_check: bool = True,
        count_tools: Sequence[str] = ("count",),
        track_check: bool = True,
        track_tools: Sequence[str] = ("track",),
        checks: Sequence[FinalCheck] = (),
    ) -> None:
        self.require_evidence = require_evidence
        self.max_sendbacks = max_sendbacks
        self.count_check = count_check
        self.count_tools = tuple(count_tools)
        self.track_check = track_check
        self.track_tools = tuple(track_tools)
        self.checks = list(checks)

    def new_state(self) -> GroundingState:
        return GroundingState()

    def check(self, final: Final, run: Any, state: GroundingState) -> Verdict | None:
        """None accepts ``final`` (warnings may have been added to ``state``); a Verdict sends it back.

        ``run`` offers ``resolvable(id)``, ``known_ids()``, ``question``, ``trace.steps``,
        ``max_steps``, ``step_number`` and ``tools``."""
        unknown = [e for e in final.evidence if not run.resolvable(e)]
        if unknown:
            known = ", ".join(run.known_ids()[:30]) or "none (call a tool first)"
            return Verdict("unknown_ids", f"the final answer cites unknown ids: {', '.join(unknown)}; known ids: {known}")
        steps = run.trace.steps
        if self.require_evidence and not final.evidence and run.tools and needs_tools(run.question, steps):
            steps_left = run.max_steps - run.step_number - 1
            if state.sendbacks < self.max_sendbacks and steps_left > 0:  # at the last step there is no turn left to fix it
                state.sendbacks += 1
                ran = any(isinstance(s, ToolStep) for s in steps)
                hint = "cite the ids of the observations that support it" if ran else "call a tool first, then cite its ids"
                return Verdict("no_evidence", f"{NO_EVIDENCE}: {hint} (region ids like det_1_0, or obs_N)")
            state.warn("the answer cites no evidence")
        tracked = self.track_check and self._check_track(final, run, steps, state)
        if self.count_check and not tracked:
            self._check_count(final, steps, state)
        for extra in self.checks:
            problem = extra(final, run)
            if problem:
                return Verdict("grounding", problem)
        return None

    def _check_track(self, final: Final, run: Any, steps: Sequence[Any], state: GroundingState) -> bool:
        """The track cross-check; True when it applied (a track tool ran and the question asks a number)."""
        question = str(getattr(run, "question", "") or "")
        tracks = track_counts(steps, self.track_tools)
        if not tracks:
            if is_distinct_count_question(question) and _has_video(run):
                state.warn(
                    "track cross-check: the question asks for distinct objects over a video but no track tool ran; "
                    "counts on single frames count an object once per frame"
                )
            return False
        if not COUNT_QUESTION_RE.search(question):
            return False
        call, counts, total, min_len = tracks[-1]
        answer = final.answer.lower()
        named = [label for label in counts if label and label.lower() in answer]
        label = named[0] if len(named) == 1 else None
        expected = counts[label] if label is not None else total
        what = f"distinct {label!r}" if label is not None else "distinct " + ", ".join(repr(lb) for lb in counts)
        said = answer_number(final.answer)
        allowed = {expected, total, *counts.values()} if label is None else {expected}
        tool = f"the track tool (obs_{call}) counted {expected} {what} (tracks of at least {min_len} sightings)"
        if said is None:
            state.warn(f"track cross-check: the answer states no number; {tool}")
        elif said not in allowed:
            state.warn(f"track cross-check: the answer says {said:g} but {tool}")
        return True

    def _check_count(self, final: Final, steps: Sequence[Any], state: GroundingState) -> None:
        counts = tool_counts(steps, self.count_tools)
        if not counts:
            return
        relevant = [c for c in counts if c[1] and c[1].lower() in final.answer.lower()] or counts
        call, label, expected = relevant[-1]
        said = answer_number(final.answer)
        what = f"{label!r} " if label else ""
        if said is None:
            state.warn(f"count cross-check: the answer states no number; the count tool (obs_{call}) counted {expected} {what}".rstrip())
        elif all(said != c[2] for c in relevant):
            state.warn(f"count cross-check: the answer says {said:g} but the count tool (obs_{call}) counted {expected} {what}".rstrip())


def _has_video(run: Any) -> bool:
    """Whether the run's media include a video (``trace.meta.media``)."""
    meta = getattr(getattr(run, "trace", None), "meta", None)
    return any(getattr(m, "kind", "") == "video" for m in getattr(meta, "media", None) or [])
