"""Asyncio front-end: run the agent without blocking the event loop.

``await aask(agent, question, media)`` returns the ``Answer``; ``astream(agent, question, media)``
returns an ``AsyncRunStream``: ``async for step in run`` yields each step as it happens and
``run.answer`` holds the Answer once the iteration ends (``await run.result()`` does both).

Model work (planner and tools) runs in a worker thread (``asyncio.to_thread``, or the
``executor`` given); steps cross back to the event loop through a queue. ``await run.start()``
validates the media (bad input raises there, before any step) and starts the worker;
``run.worker`` is the worker's future, done when the run has ended. Stopping early (``break`` out
of the ``async for``, ``aclose()``, ``stop()``, task cancellation) asks the worker to stop at the
next step boundary: the run's generator is closed there, so a started tool call finishes but no
further step starts. Any number of runs may be in flight at once; they share the agent's
ModelPool (one copy of each model; concurrent calls to one model are gathered into batched
forwards, ``visagent.batching``). The HTTP server runs every request through this bridge.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as futures
import logging
import threading
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from visagent.agent import Agent, RunStream
    from visagent.types import Answer, Step

log = logging.getLogger(__name__)

_DONE = object()


async def aask(agent: "Agent", question: str, media: Sequence[Any] = (), **kwargs: Any) -> "Answer":
    """``agent.ask`` in a worker thread. Same arguments; bad input raises the same errors."""
    return await astream(agent, question, media, **kwargs).result()


def astream(
    agent: "Agent", question: str, media: Sequence[Any] = (), *, executor: futures.Executor | None = None, **kwargs: Any
) -> "AsyncRunStream":
    """Start a run lazily: it begins on ``await run.start()`` or the first ``async for``.

    Bad input (empty question, unreadable media) raises from there, as ``UsageError`` /
    ``MediaError``, before any step. ``kwargs`` are ``Agent.stream``'s."""
    return AsyncRunStream(agent, question, list(media), kwargs, executor=executor)


class AsyncRunStream:
    """One asynchronous run. Iterate with ``async for``; ``answer`` is set when it ends."""

    def __init__(
        self, agent: "Agent", question: str, media: list[Any], kwargs: dict[str, Any], executor: futures.Executor | None = None
    ) -> None:
        self.agent = agent
        self.question = question
        self.media_inputs = media
        self.kwargs = kwargs
        self.executor = executor
        self.run: "RunStream | None" = None  # the synchronous run, once started
        self.answer: "Answer | None" = None
        self.worker: "asyncio.Future[None] | None" = None
        #: the event-loop time by which a caller with a deadline (the HTTP server) wants it done
        self.deadline: float | None = None
        self._stop = threading.Event()
        self._queue: asyncio.Queue[Any] | None = None
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

    async def start(self) -> None:
        """Validate the media (off the event loop: it decodes images) and start the worker."""
        if self.worker is not None:
            return
        loop = asyncio.get_running_loop()
        self.run = run = await loop.run_in_executor(self.executor, self._create)
        if self.worker is not None:  # started meanwhile by another caller
            return
        queue: asyncio.Queue[Any] = asyncio.Queue()
        self._queue = queue
        stop = self._stop

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

        self.worker = loop.run_in_executor(self.executor, work)
        self.worker.add_done_callback(_log_worker_error)

    def _create(self) -> "RunStream":
        """The synchronous run, its media loaded one by one: a stopped run (e.g. its request timed
        out) stops loading media."""
        from visagent.errors import RunError

        run = self.agent.stream(self.question, (), **self.kwargs)
        for source in self.media_inputs:
            if self._stop.is_set():
                raise RunError("stopped while loading media")
            run.session.add_media(source)
        run.refresh_media()
        return run

    async def _steps(self) -> AsyncIterator["Step"]:
        await self.start()
        queue, run = self._queue, self.run
        assert queue is not None and run is not None
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
            self._stop.set()  # a consumer that left early: the worker stops at its next step
            if self.answer is None and run.answer is not None:
                self.answer = run.answer


class _Failure:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def _log_worker_error(fut: "asyncio.Future[Any]") -> None:
    if not fut.cancelled() and fut.exception() is not None:
        log.debug("run worker ended with an error", exc_info=fut.exception())
