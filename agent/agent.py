"""The agent: the ReAct loop as a generator of steps.

``Agent.stream(question, media)`` returns a ``RunStream``: iterate it to get each step as it
happens; ``.answer`` holds the Answer once it is exhausted. ``Agent.ask`` runs it to the end.

A run is one turn of a ``Session`` (a fresh one unless ``session=`` is given): the session owns
media, regions, call numbers and history; the agent's ``ToolRunner`` executes every tool call; the
agent's ``GroundingPolicy`` checks every final answer, whatever the planner.
"""

from __future__ import annotations

import copy
import functools
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from visagent import ids
from visagent.config import Config, load_config
from visagent.errors import PlannerOutputError, RunError, UsageError
from visagent.grounding import FinalCheck, GroundingPolicy
from visagent.planners import Planner, PlannerState, make_planner
from visagent.pool import ModelPool
from visagent.runner import ToolRunner, format_validation_error
from visagent.safe import clean, strip_controls_in
from visagent.secrets import redact, scrub
from visagent.session import Session, session_property
from visagent.streams import StepStream
from visagent.tools.base import Tool
from visagent.trace import TraceWriter
from visagent.types import (
    TRACE_FORMAT,
    Answer,
    ErrorStep,
    Evidence,
    Final,
    FinalStep,
    NoteStep,
    PlannerReply,
    PlannerStep,
    RunMeta,
    Step,
    ToolStep,
    Trace,
)

log = logging.getLogger(__name__)

__all__ = ["Agent", "FinalCheck", "RunStream", "format_validation_error", "versions"]


@functools.cache
def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("visagent", "torch", "transformers", "pydantic", "pillow", "numpy"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    import platform

    out["python"] = platform.python_version()
    return out


def _serializable(reply: PlannerReply) -> PlannerReply:
    """``reply`` as it is when it can be written as JSON (the parsers clean what they decode), else
    with lone surrogates replaced (a planner object built in Python, say)."""
    try:
        reply.model_dump_json()
        return reply
    except ValueError:  # pydantic's serialization error
        return PlannerReply(decision=clean(reply.decision.model_dump()), raw=clean(reply.raw), tokens=reply.tokens)


class RunStream(StepStream):
    """One run (one turn of ``session``). Iterate for steps; ``answer`` is set when the iteration ends."""

    def __init__(
        self,
        agent: "Agent",
        question: str,
        media: Sequence[Any],
        *,
        planner: Planner | Callable[[], Planner],
        trace_path: str | Path | None = None,
        max_steps: int | None = None,
        history: list[dict[str, Any]] | None = None,
        progress: Callable[[str, int, int], None] | None = None,
        copy_inputs: bool = False,
        session: Session | None = None,
        runner: ToolRunner | None = None,
    ) -> None:
        self.agent = agent
        self.copy_inputs = copy_inputs
        self.question = question
        self.max_steps = max_steps or agent.config.limits.max_steps
        self.session = session if session is not None else agent.session()
        if history:  # earlier turns kept by the caller (a fresh session only; a session keeps its own)
            self.session.history = [dict(h) for h in history]
        for source in media:  # validated up front: bad media fail before anything runs
            self.session.add_media(source)
        self.runner = runner or agent.runner
        self.progress = progress
        self.planner: Planner = planner() if callable(planner) and not hasattr(planner, "next") else planner
        self.tools = self.runner.tools
        self.grounding = agent.grounding.new_state()
        self.trace = Trace(
            meta=RunMeta(
                format=TRACE_FORMAT,
                run_id=uuid.uuid4().hex[:12],
                question=question,
                turns=[h["question"] for h in self.history] + [question],
                session=self.session.snapshot(),
                media=self.media.infos(),
                cwd=_cwd(),
                config=redact(agent.config.model_dump(mode="json")),  # secrets masked by key name
                checkpoints={k: v.checkpoint for k, v in agent.config.models.items()},
                planner=getattr(self.planner, "name", type(self.planner).__name__),
                seed=agent.config.planner.seed,
                versions=versions(),
            )
        )
        if trace_path and "{run_id}" in str(trace_path):  # e.g. traces/{run_id}.jsonl: one file per run
            trace_path = str(trace_path).replace("{run_id}", self.trace.meta.run_id)
        self.writer = TraceWriter(trace_path) if trace_path else None
        self.answer: Answer | None = None
        self._iter: Iterator[Step] | None = None
        self._seen: dict[str, ToolStep] = {}
        self.step_number = 0

    media = session_property("media")
    history = session_property("history")

    def refresh_media(self) -> None:
        """Record the session's media in the trace meta again (media added after the run was made)."""
        self.trace.meta.media = self.media.infos()

    @property
    def warnings(self) -> list[str]:
        """Warnings for the Answer (the grounding policy adds them)."""
        return self.grounding.warnings

    # -- iteration (``StepStream``: iterate for the steps, ``result()``) -----------------------
    def _emit(self, step: Any) -> Any:
        if isinstance(step, ErrorStep):  # errors may quote what a planner endpoint or a tool said
            step.message = scrub(step.message)
        step.index = len(self.trace.steps)
        self.trace.steps.append(step)
        if self.writer is not None:
            self.writer.step(step)
        return step

    def _finish(self, answer: Answer) -> None:
        meta = self.trace.meta
        meta.media = self.media.infos()  # frames tools added during the run included
        meta.finished = time.time()
        meta.ms = round((meta.finished - meta.started) * 1000, 3)
        answer.trace = self.trace
        self.answer = answer
        self.session.end_turn(self.question, answer)
        if self.writer is not None:
            self.writer.answer(answer)
            self.writer.close()

    def _fail(self, status: str, error: str) -> None:
        self._finish(Answer(answer="", status=status, error=scrub(error), warnings=self.warnings))  # type: ignore[arg-type]

    def _run(self) -> Iterator[Step]:
        if self.writer is not None:
            # inputs without a file of their own get a copy beside the trace, so the run can be replayed
            folder = self.writer.path.parent / f"{self.writer.path.name}.media"
            try:
                if self.media.save_copies(folder, self.trace.meta.run_id, every_input=self.copy_inputs):
                    self.trace.meta.media = self.media.infos()
            except OSError as exc:
                self.writer.error = f"cannot write the trace's input copies in {folder}: {exc.strerror or exc}"
            self.writer.meta(self.trace.meta)
        try:
            yield from self._loop()
        except BaseException as exc:
            if self.answer is None:
                msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                self._fail("failed", msg)
            raise
        finally:
            if self.writer is not None:
                self.writer.close()

    def _loop(self) -> Iterator[Step]:
        for info in self.media.infos():
            for note in info.notes:
                yield self._emit(NoteStep(message=f"{info.id}: {note}"))
        limits = self.agent.config.limits
        errors = 0
        tool_classes = {name: type(t) for name, t in self.tools.items()}
        for i in range(self.max_steps):
            self.step_number = i  # 0-based; the grounding policy and planners see how many steps are left
            if errors > limits.max_retries:
                last = next(s for s in reversed(self.trace.steps) if isinstance(s, ErrorStep))
                self._fail("failed", f"gave up after {errors} errors in a row; last: {last.message}")
                return
            state = PlannerState(
                question=self.question,
                media=self.media.infos(),
                steps=self.trace.steps,
                tools=tool_classes,
                history=self.history,
                images=self.media.image,
                max_steps=self.max_steps,
                step=i,
                citable=self.known_ids(),
            )
            t0 = time.perf_counter()
            try:
                reply = self.planner.next(state)
            except PlannerOutputError as exc:
                errors += 1
                yield self._emit(
                    ErrorStep(source="planner", code="planner_output", message=str(exc), args={"raw": exc.raw} if exc.raw else None)
                )
                continue
            except RunError as exc:
                yield self._emit(ErrorStep(source="run", code="run", message=str(exc)))
                self._fail("failed", str(exc))
                return
            except (UsageError, KeyboardInterrupt):
                raise
            except Exception as exc:  # noqa: BLE001 - nothing a planner does raises out of the run
                errors += 1
                log.debug("planner failed", exc_info=True)
                msg = f"the planner failed: {type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
                yield self._emit(ErrorStep(source="planner", code="planner_output", message=clean(msg)))
                continue
            reply = strip_controls_in(_serializable(reply))  # thought, answer, arguments, raw text: shown on terminals
            decision = reply.decision
            yield self._emit(
                PlannerStep(
                    thought=decision.thought,
                    action=decision,
                    raw=reply.raw,
                    tokens=reply.tokens,
                    ms=round((time.perf_counter() - t0) * 1000, 3),
                )
            )
            if isinstance(decision, Final):
                noted = len(self.warnings)
                verdict = self.agent.grounding.check(decision, self, self.grounding)
                if verdict is not None:
                    errors += 1
                    yield self._emit(ErrorStep(source="final", code=verdict.code, message=verdict.message))
                    continue
                for warning in self.warnings[noted:]:
                    yield self._emit(NoteStep(message=f"warning: {warning}"))
                yield self._emit(FinalStep(answer=decision.answer, evidence=decision.evidence))
                self._finish(Answer(answer=decision.answer, evidence=self.resolve_evidence(decision.evidence), warnings=self.warnings))
                return
            result = self.runner.call(self.session, decision.tool, decision.args, emit=self._emit, seen=self._seen, progress=self.progress)
            errors = 0 if result.ok else errors + 1
            yield result.step
        self._fail("max_steps", f"no final answer within {self.max_steps} steps (raise --max-steps)")

    # -- finals ------------------------------------------------------------------------------
    def _calls(self) -> dict[int, ToolStep]:
        return {s.call: s for s in self.trace.steps if isinstance(s, ToolStep)}

    def known_ids(self) -> list[str]:
        """Every id a final answer may cite now: the session's regions and this turn's ``obs_N``."""
        return [*self.session.regions, *(ids.obs_id(c) for c in self._calls())]

    def resolvable(self, ident: str) -> bool:
        if ident in self.session.regions:
            return True
        call = ids.parse_obs_id(ident)
        return call is not None and call in self._calls()

    def resolve_evidence(self, cited: Sequence[str]) -> list[Evidence]:
        out = []
        calls = self._calls()
        for ident in cited:
            record = self.session.regions.get(ident)
            if record is not None:
                step = self.trace.steps[record.step] if record.step >= 0 else None
                out.append(
                    Evidence(
                        id=ident,
                        kind="region",
                        tool=record.tool,
                        step=record.step,
                        call=record.call,
                        region=record.region.model_dump(mode="json"),
                        observation=step.observation if isinstance(step, ToolStep) else record.observation,
                    )
                )
                continue
            call = ids.parse_obs_id(ident)
            s = calls.get(call) if call is not None else None
            if s is not None:
                out.append(Evidence(id=ident, kind="observation", tool=s.tool, step=s.index, call=s.call, observation=s.observation))
        return out


class Agent:
    """The visagent agent: a planner, tools and a shared ModelPool under one configuration."""

    def __init__(
        self,
        config: Config | None = None,
        planner: Planner | str | None = None,
        tools: Sequence[Tool | type[Tool]] | None = None,
        pool: ModelPool | None = None,
        final_checks: Sequence[FinalCheck] = (),
        grounding: GroundingPolicy | None = None,
    ) -> None:
        """``tools``: tool classes or instances (default: the built-in tools and installed plugins);
        ``grounding``: the policy finals pass (default ``GroundingPolicy()``), ``final_checks`` are
        added to it."""
        self.config = config or load_config()
        self.pool = pool or ModelPool(self.config.pool.budget_bytes)
        if tools is None:
            from visagent.registry import load_tools

            tools = list(load_tools().values())
        self.tools: dict[str, Tool] = {}
        for t in tools:
            inst = t() if isinstance(t, type) else t
            self.tools[inst.name] = inst
        self._planner_spec = planner
        self._planner: Planner | None = None if isinstance(planner, (str, type(None))) else planner
        self.grounding = copy.copy(grounding) if grounding is not None else GroundingPolicy()
        self.grounding.checks = [*self.grounding.checks, *final_checks]  # the caller's policy is not changed
        self.runner = ToolRunner(self.tools, self.config, self.pool)
        self._lock = threading.Lock()

    @classmethod
    def load(
        cls,
        config: str | Path | Config | None = None,
        profile: str | None = None,
        planner: Planner | str | None = None,
        **overrides: Any,
    ) -> "Agent":
        """Build an agent from a config file (or Config), a profile and nested overrides. With no
        ``profile``: ``VISAGENT_PROFILE``, else the config file's, else ``default``."""
        if isinstance(config, Config):
            cfg = config
        else:
            cfg = load_config(config, profile=profile, overrides=overrides)
        return cls(cfg, planner=planner)

    @property
    def planner(self) -> Planner:
        if self._planner is None:
            with self._lock:
                if self._planner is None:
                    self._planner = make_planner(self._planner_spec, self.config, pool=self.pool)
        return self._planner

    def _run_planner(self, planner: Planner | str | None) -> Planner:
        p = self.planner if planner is None else make_planner(planner, self.config, pool=self.pool)
        fork = getattr(p, "fork", None)
        return fork() if callable(fork) else p

    def session(self, media: Sequence[Any] = (), allowed_roots: Sequence[str | Path] | None = None) -> Session:
        """A new ``Session`` over this agent's config and pool, with ``media`` registered;
        ``allowed_roots``: folders paths from outside must lie in (default ``limits.allowed_roots``)."""
        return Session(self.config, self.pool, media, allowed_roots=allowed_roots)

    # -- running -----------------------------------------------------------------------------
    def stream(
        self,
        question: str,
        media: Sequence[Any] = (),
        *,
        trace_path: str | Path | None = None,
        max_steps: int | None = None,
        planner: Planner | str | None = None,
        history: list[dict[str, Any]] | None = None,
        progress: Callable[[str, int, int], None] | None = None,
        copy_inputs: bool = False,
        session: Session | None = None,
    ) -> RunStream:
        """Start a run; iterate the result for steps. Bad media raise ``MediaError`` here.

        ``session``: run as the next turn of this session (media, region ids, call numbers and
        history carry over); default a fresh one. ``history`` gives a fresh session earlier turns.

        With ``trace_path`` the trace is written as the run goes (``{run_id}`` in it is replaced by
        the run's id); inputs without a file of their own are copied beside it (``copy_inputs``:
        every input, e.g. files about to be deleted)."""
        if not isinstance(question, str) or not question.strip():
            raise UsageError("the question is empty")
        if max_steps is not None and max_steps < 1:
            raise UsageError(f"max_steps must be at least 1, got {max_steps}")
        if session is not None and history is not None:
            raise UsageError("pass history or session, not both (a session keeps its own history)")
        return RunStream(
            self,
            question,
            list(media),
            planner=lambda: self._run_planner(planner),
            trace_path=trace_path,
            max_steps=max_steps,
            history=history,
            progress=progress,
            copy_inputs=copy_inputs,
            session=session,
        )

    def ask(self, question: str, media: Sequence[Any] = (), **kwargs: Any) -> Answer:
        """Run to the end and return the Answer."""
        return self.stream(question, media, **kwargs).result()

    run = ask

    def chat(self, media: Sequence[Any] = (), **kwargs: Any) -> Any:
        """A multi-turn ``Conversation`` over ``media``: ``conv.ask(question)`` per turn; earlier
        turns' region ids stay usable and citable (see ``visagent.conversation``)."""
        from visagent.conversation import Conversation

        return Conversation(self, media, **kwargs)

    # -- asyncio -----------------------------------------------------------------------------
    async def aask(self, question: str, media: Sequence[Any] = (), **kwargs: Any) -> Answer:
        """``ask`` with the model work in a worker thread (see ``visagent.aio``)."""
        from visagent.aio import aask

        return await aask(self, question, media, **kwargs)

    def astream(self, question: str, media: Sequence[Any] = (), **kwargs: Any) -> Any:
        """An ``AsyncRunStream``: ``async for step in agent.astream(...)`` (see ``visagent.aio``)."""
        from visagent.aio import astream

        return astream(self, question, media, **kwargs)


def _cwd() -> str:
    """The current folder, or "" where it was removed under the process."""
    try:
        return os.getcwd()
    except OSError:
        return ""
