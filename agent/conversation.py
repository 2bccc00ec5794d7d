"""Multi-turn conversations: follow-up questions over the same media, with earlier evidence.

``conv = agent.chat(["photo.jpg"])`` (or ``Conversation(agent, media)``), then ``conv.ask(q)``
per turn. Across turns the conversation keeps:

- the media store: the same ids (``img_0``), images added by tools (frames) included, and the
  per-image caches (a SAM image embedding is computed once for the whole conversation);
- region ids: tool-call numbers continue (turn 2's first call is ``det_3_0`` if turn 1 made two
  calls), and earlier turns' regions stay registered, so "now segment the second one" can pass
  ``det_1_1`` to ``segment`` and a final answer may cite it. Evidence from an earlier turn has
  ``step = -1`` (its observation is copied from that turn);
- history: each turn's ``{question, answer, evidence, regions}`` is shown to the planner.

Each turn is a separate run with its own trace (``RunMeta.turns`` lists every question so far).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agent.types import Answer, ToolStep


class Conversation:
    """A sequence of runs sharing media, region ids and history (see module docstring)."""

    def __init__(self, agent: Any, media: Sequence[Any] = (), *, max_steps: int | None = None) -> None:
        from agent.media import MediaStore

        self.agent = agent
        self.max_steps = max_steps
        limits = agent.config.limits
        self.media = MediaStore(limits.max_pixels, limits.allow_urls, limits.max_video_pixels)
        for source in media:  # bad media fail here, before any turn
            self.media.add(source)
        self.turns: list[dict[str, Any]] = []
        self.answers: list[Answer] = []
        self.regions: dict[str, Any] = {}  # id -> RegionRecord (step = -1: an earlier turn)
        self._observations: dict[str, str] = {}
        self.calls = 0

    def add_media(self, source: Any) -> str:
        """Add an image / video for the following turns; returns its id."""
        return self.media.add(source)

    def stream(self, question: str, *, trace_path: str | Path | None = None, planner: Any = None, **kwargs: Any) -> Any:
        """Start the next turn; iterate the returned ``RunStream`` for its steps."""
        run = self.agent.stream(
            question,
            (),
            trace_path=trace_path,
            max_steps=kwargs.pop("max_steps", self.max_steps),
            planner=planner,
            history=[dict(t) for t in self.turns],
            **kwargs,
        )
        run.media = self.media
        run.ctx.media = self.media
        run.trace.meta.media = self.media.infos()
        run.ctx.call = self.calls
        run.ctx.regions.update(self.regions)
        return run

    def ask(self, question: str, **kwargs: Any) -> Answer:
        """Run the next turn to its end and record it."""
        run = self.stream(question, **kwargs)
        answer = run.result()
        self.record(run, answer)
        return answer

    def record(self, run: Any, answer: Answer) -> None:
        """Keep a finished turn's regions, call count and history (``ask`` does it)."""
        from dataclasses import replace

        for ev in answer.evidence:
            if ev.step == -1 and not ev.observation:
                ev.observation = self._observations.get(ev.id, "")
        new_regions = []
        for rid, record in run.ctx.regions.items():
            if rid in self.regions:
                continue
            step = run.trace.steps[record.step] if 0 <= record.step < len(run.trace.steps) else None
            if isinstance(step, ToolStep):
                self._observations[rid] = step.observation
            self.regions[rid] = replace(record, step=-1)
            new_regions.append(rid)
        self.calls = run.ctx.call
        self.turns.append(
            {
                "question": run.question,
                "answer": answer.answer if answer.ok else f"(no answer: {answer.error})",
                "evidence": [e.id for e in answer.evidence if e.kind == "region"],
                "regions": new_regions,
            }
        )
        self.answers.append(answer)
