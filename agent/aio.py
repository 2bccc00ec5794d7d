"""Asyncio front-end: run the agent without blocking the event loop.

``await aask(agent, question, media)`` returns the ``Answer``; ``astream(agent, question, media)``
returns an ``AsyncRunStream``: ``async for step in run`` yields each step as it happens and
``run.answer`` holds the Answer once the iteration ends (``await run.result()`` does both).

Model work (planner and tools) runs in a worker thread (``asyncio.to_thread``); steps cross back to
the event loop through a queue. Stopping early (``break`` out of the ``async for``, ``aclose()``,
task cancellation) asks the worker to stop at the next step boundary: the run's generator is
closed there, so a started tool call finishes but no further step starts. Any number of runs may
be in flight at once; they share the agent's ModelPool (one copy of each model, one call at a time
per model).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from agent.agent import Agent, RunStream
    from agent.types import Answer, Step

log = logging.getLogger(__name__)

_DONE = object()


async def aask(agent: "Agent", question: str, media: Sequence[Any] = (), **kwargs: Any) -> "Answer":
    """``agent.ask`` in a worker thread. Same arguments; bad input raises the same errors."""
    return await asyncio.to_thread(agent.ask, question, list(media), **kwargs)


def astream(agent: "Agent", question: str, media: Sequence[Any] = (), **kwargs: Any) -> "AsyncRunStream":
    """Start a run lazily: it begins on the first ``async for`` (or ``await run.result()``).

    Bad input (empty question, unreadable media) raises from the first iteration, as
    ``UsageError`` / ``MediaError``, before any step.
    """
    return AsyncRunStream(agent, question, list(media), kwargs)


class AsyncRunStream:
    """One asynchronous run. Iterate with ``async for``; ``answer`` is set when it ends."""

    def __init__(self, agent: "Agent", question: str, media: list[Any], kwargs: dict[str, Any]) -> None:
        self.agent = agent
        self.question = question
        self.media_inputs = media
        self.kwargs = kwargs
        self.run: "RunStream | None" = None  # the synchronous run, once started
        self.answer: "Answer | None" = None
        self._stop = threading.Event()
        self._iter: AsyncIterator["Step"] | None = None

    def __aiter__(self) -> AsyncIterator["Step"]:
        if self._iter is None:
            self._iter = self._steps()
        return self._iter

    async def result(self) -> "Answer":
        """Run to the end (if not yet) and return the Answer."""
        async for _ in self:
            pass
        assert self.answer is not None
        return self.answer

    def stop(self) -> None:
        """Ask the worker to end the run at the next step boundary."""
        self._stop.set()

    async def aclose(self) -> None:
        self.stop()
        if self._iter is not None:
            await self._iter.aclose()  # type: ignore[attr-defined]

    async def _steps(self) -> AsyncIterator["Step"]:
        loop = asyncio.get_running_loop()
        # validating media decodes images: keep that off the loop too
        self.run = await asyncio.to_thread(self.agent.stream, self.question, self.media_inputs, **self.kwargs)
        queue: asyncio.Queue[Any] = asyncio.Queue()
        stop = self._stop
        run = self.run

        def put(item: Any) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the loop is closed: nobody is listening any more
                stop.set()

        def work() -> None:
            iterator = iter(run)
            try:
                for step in iterator:
                    put(step)
                    if stop.is_set():
                        break
            except BaseException as exc:  # noqa: BLE001 - handed to the consumer
                put(_Failure(exc))
                return
            finally:
                close = getattr(iterator, "close", None)
                if close is not None:
                    close()
            put(_DONE)

        worker = asyncio.ensure_future(asyncio.to_thread(work))
        try:
            while True:
                item = await queue.get()
                if item is _DONE:
                    break
                if isinstance(item, _Failure):
                    raise item.exc
                yield item
            self.answer = run.answer
        finally:
            stop.set()
            if not worker.done():
                # let the worker finish its current step without blocking the loop
                worker.add_done_callback(_log_worker_error)
            if self.answer is None and run.answer is not None:
                self.answer = run.answer


class _Failure:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def _log_worker_error(fut: "asyncio.Future[Any]") -> None:
    if not fut.cancelled() and fut.exception() is not None:
        log.debug("run worker ended with an error", exc_info=fut.exception())
