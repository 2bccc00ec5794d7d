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


class ErrorStep(_StepBase):
    """An error the planner is told about (``source``: planner, tool, args, final, repeat, timeout)."""

    type: Literal["error"] = "error"
    source: str
    message: str
    tool: str | None = None
    args: dict[str, Any] | None = None


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


class RunMeta(BaseModel):
    """Run metadata: what is needed to understand and replay a run."""

    run_id: str = ""
    question: str = ""
    turns: list[str] = Field(default_factory=list)
    media: list[MediaInfo] = Field(default_factory=list)
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
