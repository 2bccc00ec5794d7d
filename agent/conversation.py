"""Multi-turn conversations: follow-up questions over the same media, with earlier evidence.

``conv = agent.chat(["photo.jpg"])`` (or ``Conversation(agent, media)``), then ``conv.ask(q)``
per turn. A conversation is a ``Session`` (see ``visagent.session``) and its turns:

- the media store: the same ids (``img_0``), images added by tools (frames) included, and the
  per-image caches (a SAM image embedding is computed once for the whole conversation);
- region ids: tool-call numbers continue (turn 2's first call is ``det_3_0`` if turn 1 made two
  calls), and earlier turns' regions stay registered, so "now segment the second one" can pass
  ``det_1_1`` to ``segment`` and a final answer may cite it. Evidence from an earlier turn has
  ``step = -1`` (its observation is copied from that turn);
- history: each turn's ``{question, answer, evidence, regions}`` is shown to the planner.

Each turn is a separate run with its own trace; the trace records the session it started from
(``RunMeta.session``), so ``visagent replay`` reproduces any turn on its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from visagent.session import Session, session_property
from visagent.types import Answer


class Conversation:
    """A sequence of runs sharing one ``Session`` (see module docstring)."""

    def __init__(self, agent: Any, media: Sequence[Any] = (), *, max_steps: int | None = None, session: Session | None = None) -> None:
        self.agent = agent
        self.max_steps = max_steps
        self.session = session or agent.session(media)
        if session is not None:
            for source in media:
                self.session.add_media(source)

    media = session_property("media")
    turns = session_property("history", "Each finished turn's ``{question, answer, evidence, regions}``.")
    answers = session_property("answers")
    regions = session_property("regions", "Every region id so far -> its ``RegionRecord`` (``step = -1``: an earlier turn).")
    calls = session_property("calls", "The last tool-call number used.")

    def add_media(self, source: Any) -> str:
        """Add an image / video for the following turns; returns its id."""
        return self.session.add_media(source)

    def stream(self, question: str, *, trace_path: str | Path | None = None, planner: Any = None, **kwargs: Any) -> Any:
        """Start the next turn; iterate the returned ``RunStream`` for its steps (the session
        records the turn when it ends)."""
        return self.agent.stream(
            question,
            (),
            trace_path=trace_path,
            max_steps=kwargs.pop("max_steps", self.max_steps),
            planner=planner,
            session=self.session,
            **kwargs,
        )

    def ask(self, question: str, **kwargs: Any) -> Answer:
        """Run the next turn to its end."""
        return self.stream(question, **kwargs).result()
