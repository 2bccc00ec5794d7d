"""The Planner protocol and the state a planner sees."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from visagent.types import MediaInfo, PlannerReply, Step

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

    from visagent.tools.base import Tool


@dataclass
class PlannerState:
    """Everything a planner may look at to choose the next action.

    ``steps`` are this turn's steps so far; ``history`` the ``{question, answer, evidence, regions}``
    of earlier turns of the session; ``images(id)`` returns the pixels of a media id; ``citable``
    the ids a final may cite.
    """

    question: str
    media: list[MediaInfo]
    steps: list[Step]
    tools: dict[str, type["Tool"]]
    history: list[dict[str, Any]] = field(default_factory=list)
    images: Any = None  # Callable[[str], Image.Image]
    max_steps: int = 8
    step: int = 0  # 0-based number of this planner call in the run (``max_steps - 1``: the last)
    #: every id a final answer may cite now (the session's region ids, this turn's ``obs_N``), filled by the loop
    citable: list[str] = field(default_factory=list)

    def image(self, media_id: str) -> "Image.Image":
        return self.images(media_id)


@runtime_checkable
class Planner(Protocol):
    """``next(state)`` returns the next decision (a tool action or a final answer).

    Raise ``PlannerOutputError`` for output that is not a valid action: the loop records it and
    asks again (bounded). ``name`` is recorded in the trace.
    """

    name: str

    def next(self, state: PlannerState) -> PlannerReply: ...
