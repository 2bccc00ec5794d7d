"""Core data types: actions, steps, traces, evidence and answers (pydantic v2, JSON round-trip)."""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field


class Action(BaseModel):
    """A tool call chosen by the planner. ``args`` is validated against the tool's Input model."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["action"] = "action"
    tool: str
    args: dict[str, Any] = Field(default_factory=dict)
    thought: str = ""


class Final(BaseModel):
    """A final answer. ``evidence`` lists region ids (``det_2_0``) or observation ids (``obs_2``)."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["final"] = "final"
    answer: str
    evidence: list[str] = Field(default_factory=list)
    thought: str = ""


Decision = Annotated[Union[Action, Final], Field(discriminator="kind")]


class PlannerReply(BaseModel):
    """What a planner returns: a decision plus the raw text and token count behind it."""

    decision: Decision
    raw: str = ""
    tokens: int = 0


class _StepBase(BaseModel):
    index: int = 0  # 0-based position in the trace
    ts: float = Field(default_factory=time.time)


class PlannerStep(_StepBase):
    type: Literal["planner"] = "planner"
    thought: str = ""
    action: Decision
    raw: str = ""
    tokens: int = 0
    ms: float = 0.0


class ToolStep(_StepBase):
    """One tool call. ``call`` is the 1-based tool-call number n used in region ids."""

    type: Literal["tool"] = "tool"
    call: int
    tool: str
    args: dict[str, Any]
    observation: str
    output: dict[str, Any]
    ms: float = 0.0
    models: list[str] = Field(default_factory=list)
    cache: dict[str, str] = Field(default_factory=dict)


#: machine-readable error codes (``ErrorStep.code``); message texts are for people and planners
ERROR_CODES = (
    "planner_output",  # the planner's text is not a valid action
    "unknown_tool",
    "bad_args",  # arguments do not fit the tool's Input
    "forbidden_path",  # an argument names a path outside the allowed roots
    "repeat",  # the same call again
    "timeout",
    "tool_error",  # the tool could not do what was asked (ToolError, MediaError, ValueError)
    "tool_crash",  # any other exception in the tool
    "unknown_ids",  # a final cites ids nobody produced
    "no_evidence",  # a final cites nothing for a question that needed tools (grounding policy)
    "grounding",  # another grounding check sent the final back
    "run",  # the run cannot go on
)
_CODE_OF_SOURCE = {"planner": "planner_output", "args": "bad_args", "repeat": "repeat", "timeout": "timeout", "run": "run"}


class ErrorStep(_StepBase):
    """An error the planner is told about (``source``: planner, tool, args, final, repeat, timeout,
    run; ``code``: one of ``ERROR_CODES``, for programs — never match on ``message``)."""

    type: Literal["error"] = "error"
    source: str
    message: str
    code: str = ""
    tool: str | None = None
    args: dict[str, Any] | None = None

    def model_post_init(self, __context: Any) -> None:
        if not self.code:  # traces written before codes existed
            if self.source == "final":
                self.code = "no_evidence" if self.message.startswith("the final answer cites no evidence") else (
                    "unknown_ids" if self.message.startswith("the final answer cites unknown ids") else "grounding"
                )
            elif self.source == "tool":
                self.code = "unknown_tool" if self.message.startswith("unknown tool") else "tool_error"
            else:
                self.code = _CODE_OF_SOURCE.get(self.source, self.source)


class FinalStep(_StepBase):
    type: Literal["final"] = "final"
    answer: str
    evidence: list[str] = Field(default_factory=list)


class NoteStep(_StepBase):
    """Something the run noted that is neither a planner nor a tool step (e.g. GIF first frame)."""

    type: Literal["note"] = "note"
    message: str


Step = Annotated[
    Union[PlannerStep, ToolStep, ErrorStep, FinalStep, NoteStep], Field(discriminator="type")
]


def describe_step(step: Step) -> str:
    """One line for people: ``[2] tool  detect: 2 cups found ... (31 ms)``, without control characters."""
    from visagent.safe import strip_controls

    return strip_controls(_describe_step(step))


def _describe_step(step: Step) -> str:
    kind = step.type
    if isinstance(step, PlannerStep):
        act = step.action
        import json

        what = f"final: {act.answer}" if act.kind == "final" else f"{act.tool} {json.dumps(act.args)}"
        return f"[{step.index}] plan  {what}  ({step.ms:.0f} ms)"
    if isinstance(step, ToolStep):
        cache = f" cache={step.cache}" if step.cache else ""
        return f"[{step.index}] tool  {step.tool}: {step.observation}  ({step.ms:.0f} ms){cache}"
    if isinstance(step, ErrorStep):
        return f"[{step.index}] error ({step.source}) {step.message}"
    if isinstance(step, FinalStep):
        return f"[{step.index}] final {step.answer}"
    return f"[{step.index}] {kind} {getattr(step, 'message', '')}"


class MediaInfo(BaseModel):
    id: str
    kind: Literal["image", "video"]
    source: str
    width: int = 0
    height: int = 0
    sha256: str = ""
    notes: list[str] = Field(default_factory=list)
    timestamp: float | None = None  # seconds, for frames taken from a video
    parent: str | None = None  # the video a frame came from
    #: a lossless copy written beside the trace file (path relative to it) for an input that has no
    #: file of its own (in-memory image or array, bytes, URL), so that the run can be replayed
    saved_copy: str | None = None


class SessionState(BaseModel):
    """The session a turn started from (``Session.snapshot()``): the last call number, the earlier
    turns' history and every region registered so far (``{id, tool, call, observation, type,
    region}``). Replay rebuilds the session from it."""

    calls: int = 0
    history: list[dict[str, Any]] = Field(default_factory=list)
    regions: list[dict[str, Any]] = Field(default_factory=list)


#: the trace format's version (``RunMeta.format``); readers refuse newer ones
TRACE_FORMAT = 2


class RunMeta(BaseModel):
    """Run metadata: what is needed to understand and replay a run."""

    format: int = 1  # traces without the field are version 1
    run_id: str = ""
    question: str = ""
    turns: list[str] = Field(default_factory=list)
    #: the session this turn started from (None: a fresh session, e.g. ``Agent.ask``)
    session: SessionState | None = None
    media: list[MediaInfo] = Field(default_factory=list)
    #: the folder relative media paths were given in (absolute; "" in traces written before it)
    cwd: str = ""
    config: dict[str, Any] = Field(default_factory=dict)
    checkpoints: dict[str, str] = Field(default_factory=dict)
    planner: str = ""
    seed: int = 0
    versions: dict[str, str] = Field(default_factory=dict)
    started: float = Field(default_factory=time.time)
    finished: float | None = None
    ms: float | None = None


class Trace(BaseModel):
    meta: RunMeta = Field(default_factory=RunMeta)
    steps: list[Step] = Field(default_factory=list)

    def tool_steps(self) -> list[ToolStep]:
        return [s for s in self.steps if isinstance(s, ToolStep)]


class Evidence(BaseModel):
    """A cited id resolved to what produced it."""

    id: str
    kind: Literal["region", "observation"]
    tool: str
    step: int  # index of the tool step in the trace
    call: int
    region: dict[str, Any] | None = None
    observation: str = ""

    def describe(self) -> str:
        """One line: ``det_1_0 (detect, img_0) 'cup' score 0.91 box [10, 20, 110, 140]`` for a region
        (label and score when known; a track adds its time span and number of boxes),
        ``obs_2 (ocr): <observation>`` for an observation."""
        if not self.region:
            return f"{self.id} ({self.tool}): {self.observation}"
        r = self.region
        box = ", ".join(f"{v:.0f}" for v in r.get("box", []))
        label = f" {r['label']!r}" if r.get("label") else ""
        score = f" score {r['score']:.2f}" if r.get("score") is not None else ""
        points = r.get("points")
        if isinstance(points, list) and points and all(isinstance(p, dict) and "time" in p for p in points):
            span = f"{float(points[0]['time']):.2f}-{float(points[-1]['time']):.2f} s"  # a track: boxes over time
            return f"{self.id} ({self.tool}, {r.get('image', '')}){label}{score} {span}, {len(points)} boxes, first box [{box}]"
        return f"{self.id} ({self.tool}, {r.get('image', '')}){label}{score} box [{box}]"

    def __str__(self) -> str:
        return self.describe()

    def __repr_args__(self) -> Any:
        for name, value in super().__repr_args__():
            if name == "region" and isinstance(value, dict):  # a mask's RLE runs to kilobytes
                value = {k: (_Shown(f"<rle {'x'.join(map(str, v.get('size', [])))}>") if k == "rle" and isinstance(v, dict) else v)
                         for k, v in value.items()}  # fmt: skip
            elif name == "observation" and isinstance(value, str) and len(value) > 120:
                value = value[:117] + "..."
            yield name, value


class _Shown(str):
    """A string shown as itself in a repr (a placeholder for what is left out)."""

    def __repr__(self) -> str:
        return str(self)


class Answer(BaseModel):
    """The grounded answer. ``status``: answered, max_steps (no final answer in budget) or failed."""

    answer: str
    evidence: list[Evidence] = Field(default_factory=list)
    trace: Trace = Field(default_factory=Trace)
    status: Literal["answered", "max_steps", "failed"] = "answered"
    error: str | None = None
    warnings: list[str] = Field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status == "answered"

    def __str__(self) -> str:
        """One line: ``answered: 'There is 1 cup.' citing det_1_0`` (or the status and error)."""
        cited = ", ".join(e.id for e in self.evidence) or "nothing"
        text = f"{self.status}: {self.answer!r} citing {cited}"
        return text + (f" (error: {self.error})" if self.error else "")

    def __repr_args__(self) -> Any:
        for name, value in super().__repr_args__():
            if name == "evidence":
                value = _Shown("[" + ", ".join(repr(e.id) for e in self.evidence) + "]")
            elif name == "trace":
                value = _Shown(f"<trace {self.trace.meta.run_id or '?'}: {len(self.trace.steps)} steps>")
            yield name, value
