"""Replay a recorded trace without models.

``replay(trace_path)`` re-runs the agent loop over a recorded trace: the planner's decisions come
from the trace's planner steps, and every tool call is answered with the recorded output, rebuilt
as the tool's typed Output (``ToolClass.Output.model_validate(step.output)``) by replay tools that
carry the registered tools' schemas. No model is loaded. The replayed steps are compared with the
recorded ones (types, actions and arguments, observations, errors, final answer and evidence);
the first difference is reported as the divergence.

``replay(trace_path, planner=...)`` re-plans with another planner: tool calls whose tool and
arguments match a recorded call are served from the recording (region ids renumbered to the new
call), other calls run the real tool (loading its model).

The media are re-loaded from ``meta.media`` sources (``sample:NAME`` or file paths) and checked
against their recorded sha256. Images a tool produced during the run (video frames) are
re-created by the tool's ``replay_effects`` when its call is served (``video_frames`` samples the
video again and checks the timestamps), so later calls and a new planner see their pixels.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import defaultdict, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ConfigDict, ValidationError

from visagent import ids
from visagent.config import Config, load_config
from visagent.errors import PlannerOutputError, RunError, ToolError, UsageError
from visagent.media import MediaStore
from visagent.planners.base import PlannerState
from visagent.render import iter_regions
from visagent.runner import RecordedFailure
from visagent.tools.base import Region, Tool, ToolInput, ToolOutput
from visagent.trace import read_traces
from visagent.types import Answer, ErrorStep, FinalStep, MediaInfo, PlannerReply, PlannerStep, Step, ToolStep, Trace

log = logging.getLogger(__name__)

_UNLOADABLE = ("pil", "array", "bytes")


def canonical(args: Any) -> str:
    return json.dumps(args, sort_keys=True, default=str)


# -- media --------------------------------------------------------------------------------------
def _find_relative(source: str, folders: list[tuple[str, Path | None]]) -> tuple[Path | None, str]:
    """The first ``folder / source`` that exists, and where it was looked for (for the error)."""
    tried = []
    for label, folder in folders:
        if folder is None:
            continue
        candidate = folder / source
        if candidate.exists():
            return candidate, ""
        tried.append(f"{label} {folder}")
    return None, ", ".join(tried)


def reload_media(
    infos: list[MediaInfo],
    config: Config,
    base: Path | None = None,
    trace_dir: Path | None = None,
    media_dir: Path | None = None,
    recorded_cwd: Path | None = None,
) -> list[Any]:
    """Sources to pass to the run, checked against the recorded sha256 (``UsageError`` if changed,
    or if the trace records none: nothing unchecked is loaded).

    Only the run's inputs are re-loaded (frames a tool produced carry a ``parent``). A relative path
    is looked up in the folder the run was started in (``recorded_cwd``), then beside the trace,
    then in ``base`` (the current folder). An input without a file of its own
    (in-memory image, bytes, URL) comes from the copy written beside the trace
    (``MediaInfo.saved_copy``, relative to ``trace_dir``), which must lie in the trace's own media
    folder ``media_dir``.
    """
    from PIL import Image

    limits = config.limits
    check = MediaStore(limits.max_pixels, limits.allow_urls, limits.max_video_pixels)
    sources: list[Any] = []
    folders = [("the run's folder", recorded_cwd), ("the trace's folder", trace_dir), ("the current folder", base)]
    for info in infos:
        if info.parent:
            continue
        source: Any = info.source
        fileless = source in _UNLOADABLE or source.startswith(("http://", "https://"))
        tried = ""
        if not fileless and not source.startswith("sample:") and not Path(source).expanduser().is_absolute():
            found, tried = _find_relative(source, folders)
            source = str(found) if found is not None else source
        copy = ((trace_dir or Path.cwd()) / info.saved_copy).resolve() if info.saved_copy else None
        # the trace's own copy first: the original may be a temporary file (a server's upload) about to go
        if copy is not None and (fileless or copy.is_file() or not Path(source).expanduser().exists()):
            if media_dir is not None and not copy.is_relative_to(media_dir.resolve()):
                raise UsageError(f"cannot re-load {info.id}: its copy {info.saved_copy} lies outside the trace's media folder {media_dir}")
            if not copy.is_file():
                raise UsageError(f"cannot re-load {info.id}: its copy {copy} is missing (it is written beside the trace)")
            if info.kind == "image":
                with Image.open(copy) as img:
                    source = img.convert("RGB")
            else:
                source = str(copy)
        elif fileless:
            raise UsageError(
                f"cannot re-load {info.id}: its source was {info.source!r} and the trace has no copy of it "
                "(replay needs file paths, sample:NAME, or a trace written with its input copies)"
            )
        elif tried:
            raise UsageError(f"cannot re-load {info.id}: {info.source} is not in {tried}")
        if not info.sha256:
            raise UsageError(f"the trace records no sha256 for {info.id} ({info.source}): it cannot be checked, so it is not replayed")
        media_id = check.add(source)
        got = check.info(media_id).sha256
        if got != info.sha256:
            raise UsageError(
                f"{info.id} ({info.source}) has changed since the run: sha256 {got[:12]}... != recorded {info.sha256[:12]}..."
            )
        sources.append(source)
    return sources


# -- planner ------------------------------------------------------------------------------------
class RecordedPlanner:
    """Replays the planner events of a trace in order: decisions, planner errors, run errors."""

    name = "replay"

    def __init__(self, steps: list[Step]) -> None:
        self.events: list[Step] = [
            s
            for s in steps
            if isinstance(s, PlannerStep) or (isinstance(s, ErrorStep) and s.source in ("planner", "run"))
        ]
        self.pos = 0

    def next(self, state: PlannerState) -> PlannerReply:
        if self.pos >= len(self.events):
            raise RunError(f"the recorded trace has no more planner steps (after {len(self.events)})")
        event = self.events[self.pos]
        self.pos += 1
        if isinstance(event, PlannerStep):
            return PlannerReply(decision=event.action, raw=event.raw, tokens=event.tokens)
        assert isinstance(event, ErrorStep)
        if event.source == "run":
            raise RunError(event.message)
        raw = (event.args or {}).get("raw", "")
        raise PlannerOutputError(event.message, raw=raw)


# -- tools --------------------------------------------------------------------------------------
class RecordedOutput(ToolOutput):
    """Output of a tool the registry does not know: the recorded dict, regions rebuilt."""

    model_config = ConfigDict(extra="allow")

    def observation(self) -> str:
        return str((self.__pydantic_extra__ or {}).get("__observation__", ""))

    def regions(self) -> list[Region]:
        data = {k: v for k, v in (self.__pydantic_extra__ or {}).items() if k != "__observation__"}
        return [Region.model_validate({k: r[k] for k in ("id", "image", "box", "score", "label") if k in r}) for r in iter_regions(data)]


class AnyInput(ToolInput):
    model_config = ConfigDict(extra="allow")


class RecordedTool:
    """Stands in for a recorded tool that is not installed: any arguments, the recorded outputs
    (served by ``Recording``; it never runs)."""

    Input = AnyInput
    Output = RecordedOutput
    families: tuple[str, ...] = ()

    def __init__(self, name: str) -> None:
        self.name = name
        self.description = f"Recorded outputs of {name}."

    def run(self, inp: ToolInput, ctx: Any) -> ToolOutput:  # noqa: A002
        raise ToolError(f"no recorded output for {self.name} with these arguments, and the tool is not installed")


@dataclass
class Recording:
    """Recorded tool calls, served in order per (tool, arguments): the ``ToolRunner``'s result
    source during replay. Calls without a recording run the tool when ``run_missing`` (re-planning),
    else fail."""

    steps: list[Step]
    calls: dict[str, deque[Step]] = field(default_factory=lambda: defaultdict(deque))
    served: int = 0
    ran: int = 0
    renumber: bool = False
    run_missing: bool = False
    old_of_new: dict[str, str] = field(default_factory=dict)  # region id now -> id in the recording
    inputs: dict[str, type[ToolInput]] = field(default_factory=dict)  # tool name -> Input model, for keys
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        for s in self.steps:
            if isinstance(s, ToolStep) or (isinstance(s, ErrorStep) and s.code in ("tool_error", "tool_crash", "timeout") and s.tool):
                self.calls[self.key(s.tool or "", s.args or {})].append(s)
            if isinstance(s, ToolStep):  # a tool that is not installed may use a prefix nobody declared
                for value in iter_regions(s.output):
                    rid = value.get("id")
                    if isinstance(rid, str) and ids.REGION_SHAPE_RE.match(rid):
                        ids.register_prefix(rid.rsplit("_", 2)[0], s.tool)

    def key(self, tool: str, args: dict[str, Any]) -> str:
        """The call's identity: its validated input where the tool's schema is known (defaults and
        key order do not matter), else the raw arguments."""
        schema = self.inputs.get(tool)
        if schema is not None:
            try:
                return schema.model_validate(args).call_key(tool)
            except ValidationError:
                pass
        return tool + canonical(args)

    def take(self, tool: str, args: dict[str, Any]) -> Step | None:
        with self.lock:
            queue = self.calls.get(self.key(tool, ids.map_ids(args, self.old_of_new)))
            if not queue:
                return None
            return queue.popleft()

    # -- ResultSource ---------------------------------------------------------------------------
    def result(self, tool: Any, inp: ToolInput, args: dict[str, Any], ctx: Any) -> ToolOutput | None:
        step = self.take(tool.name, args)
        if step is None:
            if not self.run_missing or isinstance(tool, RecordedTool):
                raise ToolError(f"no recorded output for {tool.name} with these arguments (replay runs no models)")
            self.ran += 1
            return None  # the runner runs the tool
        self.served += 1
        if isinstance(step, ErrorStep):
            raise RecordedFailure(step)
        assert isinstance(step, ToolStep)
        data = step.output
        if self.renumber and step.call != ctx.call:
            data = ids.renumber(data, step.call, ctx.call, self.old_of_new)
        ctx.models.extend(m for m in step.models if m not in ctx.models)
        ctx.cache.update(step.cache)
        if isinstance(tool, RecordedTool):
            return RecordedOutput.model_validate({**data, "__observation__": step.observation})
        try:
            out = tool.Output.model_validate(data)
        except ValidationError as exc:
            raise ToolError(f"the recorded output no longer fits {tool.name}'s Output: {exc.errors()[0]['msg']}") from None
        return type(tool).replay_effects(inp, out, ctx)


# -- comparing ----------------------------------------------------------------------------------
def step_signature(step: Step) -> dict[str, Any]:
    """What must match between a recorded and a replayed step."""
    if isinstance(step, PlannerStep):
        act = step.action
        if act.kind == "final":
            return {"type": "planner", "final": act.answer, "evidence": act.evidence}
        return {"type": "planner", "tool": act.tool, "args": act.args}
    if isinstance(step, ToolStep):
        return {"type": "tool", "tool": step.tool, "args": step.args, "observation": step.observation}
    if isinstance(step, ErrorStep):
        return {"type": "error", "source": step.source, "tool": step.tool}
    if isinstance(step, FinalStep):
        return {"type": "final", "answer": step.answer, "evidence": step.evidence}
    return {"type": step.type, "message": getattr(step, "message", "")}


def first_divergence(recorded: list[Step], replayed: list[Step]) -> dict[str, Any] | None:
    """``{"step", "expected", "got"}`` at the first differing step, or None."""
    for i in range(max(len(recorded), len(replayed))):
        a = step_signature(recorded[i]) if i < len(recorded) else None
        b = step_signature(replayed[i]) if i < len(replayed) else None
        if a != b:
            out = {"step": i, "expected": a, "got": b}
            for key, steps in (("expected_message", recorded), ("got_message", replayed)):
                if i < len(steps) and isinstance(steps[i], ErrorStep):  # errors compare by kind; say what they said
                    out[key] = steps[i].message
            return out
    return None


@dataclass
class ReplayResult:
    """Outcome of a replay. ``same``: the replay reached the recorded answer (and steps, without re-planning)."""

    same: bool
    answer: Answer
    recorded: dict[str, Any] | None
    divergence: dict[str, Any] | None
    served: int
    ran: int
    replanned: bool
    trace_path: str
    models_loaded: int = 0
    media: Any = None  # the replayed run's MediaStore
    run: int = 1  # which run of the file was replayed (1-based)
    runs: int = 1  # how many runs the file holds
    #: re-planning: cited region ids of the replayed run -> the recorded ids they were renumbered from
    renumbered: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "same": self.same,
            "trace": self.trace_path,
            "run": self.run,
            "runs": self.runs,
            "replanned": self.replanned,
            "answer": self.answer.answer,
            "status": self.answer.status,
            "evidence": [e.id for e in self.answer.evidence],
            "recorded_answer": (self.recorded or {}).get("answer"),
            "recorded_status": (self.recorded or {}).get("status"),
            "recorded_evidence": [e.get("id") for e in (self.recorded or {}).get("evidence", [])],
            "divergence": self.divergence,
            "renumbered": self.renumbered,
            "served": self.served,
            "ran": self.ran,
            "models_loaded": self.models_loaded,
            "steps": len(self.answer.trace.steps),
        }


def replay(
    trace_path: str | Path,
    *,
    planner: Any = None,
    config: Config | None = None,
    tools: list[type[Tool]] | None = None,
    pool: Any = None,
    trust_trace_config: bool = False,
    run: int | None = None,
) -> ReplayResult:
    """Replay ``trace_path`` (see the module docstring).

    ``config``: defaults to the recorded configuration (limits, thresholds) when the recorded
    decisions are replayed (no model is loaded); re-planning uses the current configuration
    (``load_config()``: its checkpoints, not the ones a trace names) unless ``trust_trace_config``.
    ``tools``: tool classes whose schemas (and, when re-planning, code) serve the replay, on top
    of the registered tools. ``planner``: None to replay the recorded decisions, or a planner /
    planner spec (``llava``, ``script:PLAN.yaml``) to re-plan. ``run``: which run of a file holding
    several (1-based; None: the last).
    """
    from visagent.agent import Agent, RunStream
    from visagent.planners import make_planner
    from visagent.pool import ModelPool
    from visagent.registry import load_tools

    path = Path(trace_path)
    runs = read_traces(path)
    if run is None:
        run = len(runs)
    if not 1 <= run <= len(runs):
        held = f"holds {len(runs)} run" + "s" * (len(runs) != 1)
        raise UsageError(f"{path} {held}: there is no run {run} (use 1 to {len(runs)}, or last / all)")
    trace, record = runs[run - 1]
    replanning = planner is not None
    if config is None and replanning and not trust_trace_config:
        config = load_config()
    if config is None:
        try:
            config = Config.model_validate(trace.meta.config) if trace.meta.config else load_config()
        except ValidationError as exc:
            raise UsageError(f"{path}: the recorded configuration is invalid: {exc.errors()[0]['msg']}") from None
    sources = reload_media(
        trace.meta.media, config, base=Path.cwd(), trace_dir=path.parent, media_dir=path.parent / f"{path.name}.media",
        recorded_cwd=Path(trace.meta.cwd) if trace.meta.cwd else None,
    )  # fmt: skip
    classes: dict[str, type[Tool]] = dict(load_tools())
    for t in tools or []:
        classes[t.name] = t
    recording = Recording(trace.steps, renumber=replanning, run_missing=replanning, inputs={n: c.Input for n, c in classes.items()})
    replay_tools: list[Any] = [c() for c in classes.values()]
    replay_tools += [RecordedTool(n) for n in dict.fromkeys(s.tool for s in trace.tool_steps()) if n not in classes]
    pool = pool or ModelPool(config.pool.budget_bytes)
    if replanning:
        chosen = make_planner(planner, config)
        fork = getattr(chosen, "fork", None)
        chosen = fork() if callable(fork) else chosen
    else:
        chosen = RecordedPlanner(trace.steps)
    agent = Agent(config, planner=chosen, tools=replay_tools, pool=pool)
    question = trace.meta.question or (trace.meta.turns[-1] if trace.meta.turns else "")
    if not question:
        raise UsageError(f"{path}: the trace records no question")
    session = agent.session()
    if trace.meta.session is not None:  # a later turn of a chat: the session it started from
        session.restore(trace.meta.session)
    else:
        session.history = [{"question": q} for q in trace.meta.turns[:-1]]
    for source in sources:
        session.add_media(source)
    stream = RunStream(
        agent, question, (), planner=chosen, max_steps=_max_steps(trace, config, record), session=session,
        runner=agent.runner.with_source(recording),
    )  # fmt: skip
    answer = stream.result()
    got, expected = _sig(answer.model_dump(mode="json", exclude={"trace"})), _sig(record)
    divergence = None
    renumbered: dict[str, str] = {}
    if replanning:
        renumbered = {e: recording.old_of_new[e] for e in got["evidence"] if recording.old_of_new.get(e, e) != e}
        in_recorded_ids = {**got, "evidence": [recording.old_of_new.get(e, e) for e in got["evidence"]]}
        same = in_recorded_ids == expected if record is not None else answer.status != "failed"
    elif record is None:  # interrupted run: the replay must reproduce every recorded step
        divergence = first_divergence(trace.steps, answer.trace.steps[: len(trace.steps)])
        same = divergence is None
    else:
        divergence = first_divergence(trace.steps, answer.trace.steps)
        same = divergence is None and got == expected
    if not same and divergence is None and record is not None:
        divergence = {"step": None, "expected": expected, "got": got}
    loaded = len(pool.stats()["models"]) if hasattr(pool, "stats") else 0
    return ReplayResult(
        same=same,
        answer=answer,
        recorded=record,
        divergence=divergence,
        served=recording.served,
        ran=recording.ran,
        replanned=replanning,
        trace_path=str(path),
        models_loaded=loaded,
        media=stream.media,
        run=run,
        runs=len(runs),
        renumbered=renumbered,
    )


def _max_steps(trace: Trace, config: Config, record: dict[str, Any] | None = None) -> int:
    n_decisions = sum(1 for s in trace.steps if isinstance(s, PlannerStep) or (isinstance(s, ErrorStep) and s.source == "planner"))
    if record is not None and record.get("status") == "max_steps":  # the run stopped at its step budget: the same budget
        return max(n_decisions, 1)
    return max(config.limits.max_steps, 1) if n_decisions <= config.limits.max_steps else n_decisions


def _sig(answer: dict[str, Any] | None) -> dict[str, Any] | None:
    """What must match between answers: text, status and cited ids (an Answer's or a record's JSON)."""
    if answer is None:
        return None
    evidence = [e.get("id") for e in answer.get("evidence", [])]
    return {"answer": answer.get("answer", ""), "status": answer.get("status", "answered"), "evidence": evidence}
