"""The agent: the ReAct loop as a generator of steps.

``Agent.stream(question, media)`` returns a ``RunStream``: iterate it to get each step as it
happens; ``.answer`` holds the Answer once it is exhausted. ``Agent.ask`` runs it to the end.
"""

from __future__ import annotations

import concurrent.futures as futures
import functools
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from agent.config import Config, load_config
from agent.context import RunContext
from agent.errors import MediaError, PlannerOutputError, RunError, ToolError, UsageError
from agent.media import MediaStore
from agent.planners import Planner, PlannerState, make_planner
from agent.pool import ModelPool, is_out_of_memory
from agent.trace import TraceWriter
from agent.types import (
    Action,
    Answer,
    ErrorStep,
    Evidence,
    Final,
    FinalStep,
    NoteStep,
    PlannerStep,
    RunMeta,
    Step,
    ToolStep,
    Trace,
)
from tools.base import Tool, clip_text

log = logging.getLogger(__name__)

_OBS_RE = re.compile(r"^obs_(\d+)$")

#: a final-answer check: (final, run) -> error text sent back to the planner, or None
FinalCheck = Callable[[Final, "RunStream"], str | None]


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


def format_validation_error(tool: str, exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:4]:
        loc = ".".join(str(p) for p in err["loc"]) or "arguments"
        parts.append(f"{loc}: {err['msg']}")
    return f"bad arguments for {tool}: " + "; ".join(parts)


class RunStream:
    """One run. Iterate for steps; ``answer`` is set when the iteration ends."""

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
    ) -> None:
        self.agent = agent
        self.copy_inputs = copy_inputs
        self.question = question
        self.max_steps = max_steps or agent.config.limits.max_steps
        self.history = history or []
        limits = agent.config.limits
        self.media = MediaStore(limits.max_pixels, limits.allow_urls, limits.max_video_pixels)
        for source in media:  # validated up front: bad media fails before anything runs
            self.media.add(source)
        self.planner: Planner = planner() if callable(planner) and not hasattr(planner, "next") else planner
        self.ctx = RunContext(agent.config, agent.pool, self.media, progress)
        self.trace = Trace(
            meta=RunMeta(
                run_id=uuid.uuid4().hex[:12],
                question=question,
                turns=[h["question"] for h in self.history] + [question],
                media=self.media.infos(),
                config=agent.config.model_dump(mode="json"),
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
        self._seen_actions: dict[str, int] = {}
        #: warnings for the Answer (final checks append; each becomes a NoteStep before the final)
        self.warnings: list[str] = []

    # -- iteration ---------------------------------------------------------------------------
    def __iter__(self) -> Iterator[Step]:
        if self._iter is None:
            self._iter = self._run()
        return self._iter

    def result(self) -> Answer:
        for _ in self:
            pass
        assert self.answer is not None
        return self.answer

    def _emit(self, step: Any) -> Any:
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
        if self.writer is not None:
            self.writer.answer(answer)
            self.writer.close()

    def _run(self) -> Iterator[Step]:
        if self.writer is not None:
            # inputs without a file of their own get a copy beside the trace, so the run can be replayed
            folder = self.writer.path.parent / f"{self.writer.path.name}.media"
            if self.media.save_copies(folder, self.trace.meta.run_id, every_input=self.copy_inputs):
                self.trace.meta.media = self.media.infos()
            self.writer.meta(self.trace.meta)
        try:
            yield from self._loop()
        except BaseException as exc:
            if self.answer is None:
                msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                self._finish(Answer(answer="", status="failed", error=msg))
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
        tools = self.agent.tools
        tool_classes = {name: type(t) for name, t in tools.items()}
        warnings = self.warnings  # final checks may add to run.warnings
        for i in range(self.max_steps):
            self.step_number = i  # 0-based; final checks and planners see how many steps are left
            if errors > limits.max_retries:
                last = next(s for s in reversed(self.trace.steps) if isinstance(s, ErrorStep))
                self._finish(
                    Answer(answer="", status="failed", error=f"gave up after {errors} errors in a row; last: {last.message}", warnings=warnings)
                )
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
            )
            t0 = time.perf_counter()
            try:
                reply = self.planner.next(state)
            except PlannerOutputError as exc:
                errors += 1
                yield self._emit(ErrorStep(source="planner", message=str(exc), args={"raw": exc.raw} if exc.raw else None))
                continue
            except RunError as exc:
                yield self._emit(ErrorStep(source="run", message=str(exc)))
                self._finish(Answer(answer="", status="failed", error=str(exc), warnings=warnings))
                return
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
                noted = len(warnings)
                problem = self._check_final(decision, warnings)
                if problem:
                    errors += 1
                    yield self._emit(ErrorStep(source="final", message=problem))
                    continue
                for warning in warnings[noted:]:
                    yield self._emit(NoteStep(message=f"warning: {warning}"))
                yield self._emit(FinalStep(answer=decision.answer, evidence=decision.evidence))
                self._finish(
                    Answer(answer=decision.answer, evidence=self.resolve_evidence(decision.evidence), warnings=warnings)
                )
                return
            step = self._call_tool(decision)
            errors = errors + 1 if isinstance(step, ErrorStep) else 0
            yield step
        self._finish(
            Answer(
                answer="",
                status="max_steps",
                error=f"no final answer within {self.max_steps} steps (raise --max-steps)",
                warnings=warnings,
            )
        )

    # -- tools -------------------------------------------------------------------------------
    def _call_tool(self, action: Action) -> Step:
        name = action.tool
        tool = self.agent.tools.get(name)
        if tool is None:
            return self._emit(
                ErrorStep(
                    source="tool",
                    tool=name,
                    args=action.args,
                    message=f"unknown tool '{name}'; available: {', '.join(self.agent.tools)}",
                )
            )
        try:
            inp = tool.Input.model_validate(action.args)
        except ValidationError as exc:
            return self._emit(ErrorStep(source="args", tool=name, args=action.args, message=format_validation_error(name, exc)))
        key = inp.call_key(name)
        earlier = self._seen_actions.get(key)
        if earlier is not None:
            prev = self.trace.steps[earlier]
            obs = prev.observation if isinstance(prev, ToolStep) else ""
            return self._emit(
                ErrorStep(
                    source="repeat",
                    tool=name,
                    args=action.args,
                    message=f"repeated action: {name} was already called with these arguments (step {earlier}); "
                    f"its observation was: {clip_text(obs, 200)} — use it, try something else, or answer",
                )
            )
        ctx = self.ctx
        call = ctx.begin_call()
        t0 = time.perf_counter()
        try:
            try:
                try:
                    output = self.agent._execute(tool, inp, ctx)
                except Exception as exc:
                    # out of device memory: evict the models no one is using (this tool's stay) and retry once
                    if not is_out_of_memory(exc) or not self.agent.pool.free_idle(keep_families=tool.families):
                        raise
                    log.warning("%s ran out of memory: evicted idle models, retrying", name)
                    output = self.agent._execute(tool, inp, ctx)
                observation = clip_text(output.observation())
            except BaseException:
                ctx.end_failed_call()  # a failed call takes no number: ids stay dense
                raise
        except futures.TimeoutError:
            return self._emit(
                ErrorStep(source="timeout", tool=name, args=action.args, message=f"{name} timed out after {self.agent.config.limits.tool_timeout_s} s")
            )
        except (ToolError, MediaError, ValueError) as exc:
            return self._emit(ErrorStep(source="tool", tool=name, args=action.args, message=f"{name}: {exc}"))
        except UsageError:
            raise
        except Exception as exc:  # noqa: BLE001 - a tool crash is an observation, not a crash
            log.debug("tool %s failed", name, exc_info=True)
            return self._emit(
                ErrorStep(source="tool", tool=name, args=action.args, message=f"{name} failed: {type(exc).__name__}: {exc}")
            )
        ms = (time.perf_counter() - t0) * 1000
        step = ToolStep(
            call=call,
            tool=name,
            args=action.args,
            observation=observation,
            output=output.model_dump(mode="json"),
            ms=round(ms, 3),
            models=list(ctx.models),
            cache=dict(ctx.cache),
        )
        self._emit(step)
        self._seen_actions[key] = step.index
        regions = output.regions()
        if regions:
            ctx.record_regions(regions, name, step.index)
        return step

    # -- finals ------------------------------------------------------------------------------
    def known_ids(self) -> list[str]:
        ids = list(self.ctx.regions)
        ids += [f"obs_{s.call}" for s in self.trace.steps if isinstance(s, ToolStep)]
        return ids

    def _check_final(self, final: Final, warnings: list[str]) -> str | None:
        unknown = [e for e in final.evidence if not self._resolvable(e)]
        if unknown:
            known = ", ".join(self.known_ids()[:30]) or "none (call a tool first)"
            return f"the final answer cites unknown ids: {', '.join(unknown)}; known ids: {known}"
        for check in [*self.agent.final_checks, *getattr(self.planner, "final_checks", ())]:
            problem = check(final, self)
            if problem:
                return problem
        return None

    def _resolvable(self, ident: str) -> bool:
        if ident in self.ctx.regions:
            return True
        m = _OBS_RE.match(ident)
        return bool(m) and any(isinstance(s, ToolStep) and s.call == int(m.group(1)) for s in self.trace.steps)

    def resolve_evidence(self, ids: Sequence[str]) -> list[Evidence]:
        out = []
        for ident in ids:
            record = self.ctx.regions.get(ident)
            if record is not None:
                step = self.trace.steps[record.step]
                out.append(
                    Evidence(
                        id=ident,
                        kind="region",
                        tool=record.tool,
                        step=record.step,
                        call=record.call,
                        region=record.region.model_dump(mode="json"),
                        observation=step.observation if isinstance(step, ToolStep) else "",
                    )
                )
                continue
            m = _OBS_RE.match(ident)
            for s in self.trace.steps:
                if m and isinstance(s, ToolStep) and s.call == int(m.group(1)):
                    out.append(Evidence(id=ident, kind="observation", tool=s.tool, step=s.index, call=s.call, observation=s.observation))
                    break
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
    ) -> None:
        self.config = config or load_config()
        self.pool = pool or ModelPool(self.config.pool.budget_bytes)
        if tools is None:
            from agent.registry import load_builtin_tools

            tools = list(load_builtin_tools().values())
        self.tools: dict[str, Tool] = {}
        for t in tools:
            inst = t() if isinstance(t, type) else t
            self.tools[inst.name] = inst
        self._planner_spec = planner
        self._planner: Planner | None = None if isinstance(planner, (str, type(None))) else planner
        self.final_checks: list[FinalCheck] = list(final_checks)
        self._executor: futures.ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    @classmethod
    def load(
        cls,
        config: str | Path | Config | None = None,
        profile: str | None = "default",
        planner: Planner | str | None = None,
        **overrides: Any,
    ) -> "Agent":
        """Build an agent from a config file (or Config), a profile and nested overrides."""
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
    ) -> RunStream:
        """Start a run; iterate the result for steps. Bad media raise ``MediaError`` here.

        With ``trace_path`` the trace is written as the run goes (``{run_id}`` in it is replaced by
        the run's id); inputs without a file of their own are copied beside it (``copy_inputs``:
        every input, e.g. files about to be deleted)."""
        if not isinstance(question, str) or not question.strip():
            raise UsageError("the question is empty")
        if max_steps is not None and max_steps < 1:
            raise UsageError(f"max_steps must be at least 1, got {max_steps}")
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
        )

    def ask(self, question: str, media: Sequence[Any] = (), **kwargs: Any) -> Answer:
        """Run to the end and return the Answer."""
        return self.stream(question, media, **kwargs).result()

    run = ask

    def chat(self, media: Sequence[Any] = (), **kwargs: Any) -> Any:
        """A multi-turn ``Conversation`` over ``media``: ``conv.ask(question)`` per turn; earlier
        turns' region ids stay usable and citable (see ``agent.conversation``)."""
        from agent.conversation import Conversation

        return Conversation(self, media, **kwargs)

    def _execute(self, tool: Tool, inp: Any, ctx: RunContext) -> Any:
        timeout = self.config.limits.tool_timeout_s
        if not timeout:
            return tool.run(inp, ctx)
        if self._executor is None:
            with self._lock:
                if self._executor is None:
                    self._executor = futures.ThreadPoolExecutor(max_workers=16, thread_name_prefix="visagent-tool")
        return self._executor.submit(tool.run, inp, ctx).result(timeout=timeout)

    # -- asyncio -----------------------------------------------------------------------------
    async def aask(self, question: str, media: Sequence[Any] = (), **kwargs: Any) -> Answer:
        """``ask`` with the model work in a worker thread (see ``agent.aio``)."""
        from agent.aio import aask

        return await aask(self, question, media, **kwargs)

    def astream(self, question: str, media: Sequence[Any] = (), **kwargs: Any) -> Any:
        """An ``AsyncRunStream``: ``async for step in agent.astream(...)`` (see ``agent.aio``)."""
        from agent.aio import astream

        return astream(self, question, media, **kwargs)
