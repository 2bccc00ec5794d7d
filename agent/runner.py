"""ToolRunner: the one place a tool call is executed, wherever it comes from (the agent loop, the
LangChain tools, replay, the MCP / HTTP tool endpoints).

``runner.call(session, tool, args, emit=...)`` does, in order:

1. look the tool up (``unknown_tool``), validate the arguments against its ``Input`` (``bad_args``);
2. detect a repeat of an earlier call with the same validated input (``repeat``; only where the
   caller keeps a ``seen`` map, i.e. within a run);
3. take the next call number from the session and open a ``CallContext`` for it;
4. get the output — from the ``source`` when one is plugged in (replay serves recorded outputs),
   else by running the tool — under the per-tool timeout (``timeout``), evicting idle models and
   retrying once when the device runs out of memory;
5. close the context (a timed-out tool thread can no longer write ids, images or cache entries),
   give the call number back on failure (ids stay dense), emit the ``ToolStep`` / ``ErrorStep``
   and record the output's regions in the session.

Errors become ``ErrorStep``s with a ``code`` (see ``visagent.types.ERROR_CODES``); only usage
errors of the developer (``UsageError`` outside media) raise.
"""

from __future__ import annotations

import concurrent.futures as futures
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import ValidationError

from visagent.context import CallContext, Models
from visagent.errors import MediaError, ToolError, UsageError
from visagent.safe import strip_controls, strip_controls_in
from visagent.tools.base import ToolInput, ToolOutput, clip_text
from visagent.types import ErrorStep, Step, ToolStep

if TYPE_CHECKING:  # pragma: no cover
    from visagent.config import Config
    from visagent.pool import ModelPool
    from visagent.session import Session
    from visagent.tools.base import Tool

log = logging.getLogger(__name__)


def format_validation_error(tool: str, exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:4]:
        loc = ".".join(str(p) for p in err["loc"]) or "arguments"
        parts.append(f"{loc}: {err['msg']}")
    return f"bad arguments for {tool}: " + "; ".join(parts)


class RecordedFailure(Exception):
    """Raised by a result source to replay a recorded error step as it was."""

    def __init__(self, step: ErrorStep) -> None:
        super().__init__(step.message)
        self.step = step


class ResultSource(Protocol):
    """Where outputs come from instead of running the tool (replay plugs recorded outputs in).

    ``result`` returns the output, ``None`` to run the tool, or raises ``RecordedFailure`` /
    ``ToolError``."""

    def result(self, tool: "Tool", inp: ToolInput, args: dict[str, Any], ctx: "CallContext") -> ToolOutput | None: ...


@dataclass
class CallResult:
    """What a call produced: the emitted step and, when it succeeded, the typed output."""

    step: ToolStep | ErrorStep
    output: ToolOutput | None = None

    @property
    def ok(self) -> bool:
        return isinstance(self.step, ToolStep)


class ToolRunner:
    """Executes tool calls for one agent's tools, config and model pool (see module docstring)."""

    def __init__(
        self,
        tools: Mapping[str, "Tool"],
        config: "Config",
        pool: "ModelPool",
        *,
        source: ResultSource | None = None,
    ) -> None:
        self.tools = tools
        self.config = config
        self.pool = pool
        self.source = source
        self.models = Models(config, pool)
        self._executor: futures.ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def with_source(self, source: ResultSource | None) -> "ToolRunner":
        """A runner over the same tools whose outputs come from ``source``."""
        twin = ToolRunner(self.tools, self.config, self.pool, source=source)
        twin._executor = self._executor
        twin.models = self.models
        return twin

    # -- running ------------------------------------------------------------------------------
    def call(
        self,
        session: "Session",
        name: str,
        args: dict[str, Any],
        *,
        emit: Callable[[Step], Step],
        seen: dict[str, ToolStep] | None = None,
        progress: Callable[[str, int, int], None] | None = None,
    ) -> CallResult:
        """Run ``name`` with ``args`` in ``session``; ``emit`` gives the step its index (and writes
        it to the trace). ``seen`` (call key -> step) turns repeats into errors."""

        def error(code: str, source: str, message: str) -> CallResult:
            return CallResult(emit(ErrorStep(source=source, code=code, tool=name, args=args, message=message)))

        tool = self.tools.get(name)
        if tool is None:
            return error("unknown_tool", "tool", f"unknown tool '{name}'; available: {', '.join(self.tools) or 'none'}")
        try:
            inp = tool.Input.model_validate(args)
        except ValidationError as exc:
            return error("bad_args", "args", format_validation_error(name, exc))
        try:
            for path in inp.paths():
                session.check_path(path)
        except MediaError as exc:
            return error("forbidden_path", "args", f"{name}: {exc}")
        key = inp.call_key(name)
        earlier = seen.get(key) if seen is not None else None
        if earlier is not None:
            return error(
                "repeat",
                "repeat",
                f"repeated action: {name} was already called with these arguments (step {earlier.index}); "
                f"its observation was: {clip_text(earlier.observation, 200)} — use it, try something else, or answer",
            )
        ctx = CallContext(session, self.models, session.next_call(), progress)
        t0 = time.perf_counter()
        try:
            output = strip_controls_in(self._output(tool, inp, args, ctx))  # model text, shown on terminals
            observation = clip_text(strip_controls(output.observation()))
        except RecordedFailure as exc:
            session.release_call(ctx.call)
            recorded = exc.step
            return CallResult(emit(ErrorStep(source=recorded.source, code=recorded.code, tool=name, args=args, message=recorded.message)))
        except futures.TimeoutError:
            session.release_call(ctx.call)
            return error("timeout", "timeout", f"{name} timed out after {self.config.limits.tool_timeout_s} s")
        except (ToolError, MediaError, ValueError) as exc:
            session.release_call(ctx.call)
            return error("tool_error", "tool", f"{name}: {exc}")
        except UsageError:
            session.release_call(ctx.call)
            raise
        except Exception as exc:  # noqa: BLE001 - a tool crash is an observation, not a crash
            session.release_call(ctx.call)
            log.debug("tool %s failed", name, exc_info=True)
            return error("tool_crash", "tool", f"{name} failed: {type(exc).__name__}: {exc}")
        finally:
            ctx.close()
        step = emit(
            ToolStep(
                call=ctx.call,
                tool=name,
                args=args,
                observation=observation,
                output=output.model_dump(mode="json"),
                ms=round((time.perf_counter() - t0) * 1000, 3),
                models=list(ctx.models),
                cache=dict(ctx.cache),
            )
        )
        assert isinstance(step, ToolStep)
        if seen is not None:
            seen[key] = step
        session.record(output.regions(), name, step.index, ctx.call, observation)
        return CallResult(step, output)

    def _output(self, tool: "Tool", inp: ToolInput, args: dict[str, Any], ctx: "CallContext") -> ToolOutput:
        if self.source is not None:
            served = self.source.result(tool, inp, args, ctx)
            if served is not None:
                return served
        try:
            return self._execute(tool, inp, ctx)
        except Exception as exc:
            from visagent.pool import is_out_of_memory

            # out of device memory: evict the models no one is using (this tool's stay) and retry once
            if not is_out_of_memory(exc) or not self.pool.free_idle(keep_families=tool.families):
                raise
            log.warning("%s ran out of memory: evicted idle models, retrying", tool.name)
            return self._execute(tool, inp, ctx)

    def _execute(self, tool: "Tool", inp: ToolInput, ctx: "CallContext") -> ToolOutput:
        timeout = self.config.limits.tool_timeout_s
        if not timeout:
            return tool.run(inp, ctx)
        if self._executor is None:
            with self._lock:
                if self._executor is None:
                    self._executor = futures.ThreadPoolExecutor(max_workers=16, thread_name_prefix="visagent-tool")
        return self._executor.submit(tool.run, inp, ctx).result(timeout=timeout)

