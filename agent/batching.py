"""Batching across runs: concurrent calls to one model gathered into one forward.

A ``Batcher`` serves one operation of one model (e.g. ``detect_many`` of the configured detector).
Callers ``submit(item)`` and block until their own result (or their own exception) comes back.

How a batch forms (leader / followers, no background thread):

- The first caller that finds the batcher idle becomes the **leader** and runs at once: when
  nothing else is in flight its item is a batch of one, started before any wait (a single run pays
  no extra latency).
- While a forward runs, newly arriving items queue. When the forward ends, the leader hands the
  lead to the oldest queued caller, whose next forward takes up to ``max_batch`` queued items (FIFO,
  so the new leader's own item is always in it). Each caller leads at most one forward, then
  returns with its result.
- ``batch_wait_ms``: a leader waits up to this long for more items, but only while other calls to
  the same model are *known to be arriving*: a tool announces its call with ``BatchGroup.expect()``
  (``ctx.batched(family)``) before it prepares its item, so a leader waits only for callers that
  have announced a call and not submitted it yet — never for callers that might come.
- One bad item fails only its caller: if a batched forward raises, the batch is run again item by
  item, each caller getting its own result or error.
- Cancelled calls do not wedge the batcher: a caller whose ``alive()`` turns false (its tool call
  timed out or was abandoned) is dropped from the queue with an error when a batch forms, and the
  lead passes on in a ``finally`` whatever the forward raised.
- ``max_batch: 1`` disables batching: each call is its own forward, one at a time (as the model
  lock did).

The ``run`` function given to a batcher owns the model for the duration of a forward (in the pool:
``with pool.use(key, loader)``, so a model in use by a batch is never evicted, and non-batched users
of the same model — ``ctx.model(family)`` — are serialised with it by the model lock).

Statistics per batcher (``stats()``): ``batches``, ``items``, ``mean_size``, ``max_size``,
``sizes`` (histogram ``{size: count}``, sizes as strings for JSON), ``waited`` (batches whose leader
waited for announced arrivals), ``fallbacks`` (batches re-run item by item).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

#: run(items) -> results, one per item, same order
RunFn = Callable[[list[Any]], list[Any]]

DEFAULT_MAX_BATCH = 8
DEFAULT_BATCH_WAIT_MS = 2.0
#: model families whose built-in tools submit through a batcher (``models.<family>.max_batch``)
BATCHED_FAMILIES = ("detect", "caption", "vqa", "search", "segment")


class CallAbandoned(RuntimeError):
    """The caller of a queued item went away (its call timed out or was cancelled)."""


@dataclass
class _Pending:
    item: Any
    alive: Callable[[], bool] | None = None
    wake: threading.Event = field(default_factory=threading.Event)
    lead: bool = False
    finished: bool = False
    result: Any = None
    error: BaseException | None = None


@dataclass
class BatchRecord:
    """One forward: its size, whether its leader waited, and when it started (``time.monotonic``)."""

    size: int
    waited: bool
    started: float


class BatchGroup:
    """What the batchers of one model share: the count of announced calls (``expect``) and of
    callers inside ``submit``; a leader waits only while ``announced - submitting > 0``."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.announced = 0
        self.submitting = 0

    @contextmanager
    def expect(self) -> Iterator[None]:
        """Announce a call to this model for the duration of the block (a tool call that will
        ``submit``); lets a leader wait ``batch_wait_ms`` for it."""
        with self.cond:
            self.announced += 1
        try:
            yield
        finally:
            with self.cond:
                self.announced -= 1
                self.cond.notify_all()

    def arriving(self) -> int:
        """Announced calls not inside ``submit`` right now (call with ``cond`` held)."""
        return max(0, self.announced - self.submitting)


class Batcher:
    """Gathers concurrent ``submit(item)`` calls into ``run(items)`` forwards of at most
    ``max_batch`` items (see the module docstring)."""

    def __init__(
        self,
        run: RunFn,
        *,
        max_batch: int = DEFAULT_MAX_BATCH,
        batch_wait_ms: float = DEFAULT_BATCH_WAIT_MS,
        group: BatchGroup | None = None,
        name: str = "",
        keep_records: int = 256,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self.run_fn = run
        self.max_batch = int(max_batch)
        self.batch_wait_ms = max(0.0, float(batch_wait_ms))
        self.group = group or BatchGroup()
        self.name = name
        self._queue: deque[_Pending] = deque()
        self._running = False
        self._sizes: Counter[int] = Counter()
        self._waited = 0
        self._fallbacks = 0
        self.records: deque[BatchRecord] = deque(maxlen=keep_records)

    def configure(self, max_batch: int, batch_wait_ms: float) -> None:
        """Change the limits (taken into account from the next batch on)."""
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        with self.group.cond:
            self.max_batch = int(max_batch)
            self.batch_wait_ms = max(0.0, float(batch_wait_ms))

    # -- submit --------------------------------------------------------------------------------
    def submit(self, item: Any, alive: Callable[[], bool] | None = None) -> Any:
        """Run ``item`` in a batch and return its result (or raise its error). ``alive``: called
        when a batch forms; False drops the item with ``CallAbandoned``."""
        p = _Pending(item, alive)
        cond = self.group.cond
        with cond:
            self.group.submitting += 1
            self._queue.append(p)
            if not self._running:
                self._running = True
                p.lead = True
            else:
                cond.notify_all()  # a waiting leader may now have enough
        try:
            if not p.lead:
                p.wake.wait()  # set when the result is in, or when the lead passes to this caller
            if not p.finished:
                self._lead()
        finally:
            with cond:
                self.group.submitting -= 1
        if p.error is not None:
            raise p.error
        return p.result

    # -- the leader ----------------------------------------------------------------------------
    def _take(self) -> tuple[list[_Pending], bool]:
        """Wait (maybe) and take the next batch; called by the leader, ``cond`` not held."""
        cond = self.group.cond
        waited = False
        with cond:
            if self.batch_wait_ms > 0 and self.max_batch > 1:
                deadline = time.monotonic() + self.batch_wait_ms / 1000
                while len(self._queue) < self.max_batch and self.group.arriving() > 0:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    waited = True
                    cond.wait(left)
            batch: list[_Pending] = []
            while self._queue and len(batch) < self.max_batch:
                p = self._queue.popleft()
                if p.alive is not None and not _safe_alive(p.alive):
                    _finish(p, error=CallAbandoned("the call was abandoned before its batch ran"))
                    continue
                batch.append(p)
        return batch, waited

    def _lead(self) -> None:
        batch: list[_Pending] = []
        try:
            batch, waited = self._take()
            if batch:
                self._record(len(batch), waited)
                self._forward(batch)
        finally:
            for p in batch:  # whatever happened, nobody in this batch waits forever
                if not p.finished:
                    _finish(p, error=RuntimeError("the batch was interrupted"))
            self._hand_off()

    def _forward(self, batch: list[_Pending]) -> None:
        items = [p.item for p in batch]
        try:
            results = self.run_fn(items)
            if len(results) != len(items):
                raise RuntimeError(f"batched call returned {len(results)} results for {len(items)} items")
        except Exception as exc:
            if len(batch) == 1:
                _finish(batch[0], error=exc)
                return
            log.info("batch of %d on %s failed (%s); running its items one by one", len(batch), self.name, exc)
            with self.group.cond:
                self._fallbacks += 1
            for p in batch:
                try:
                    _finish(p, result=self.run_fn([p.item])[0])
                except Exception as one:  # noqa: BLE001 - goes to its own caller
                    _finish(p, error=one)
            return
        for p, r in zip(batch, results):
            _finish(p, result=r)

    def _hand_off(self) -> None:
        with self.group.cond:
            if self._queue:
                nxt = self._queue[0]
                nxt.lead = True
                nxt.wake.set()  # it is not finished: it runs the next batch
                return
            self._running = False

    def _record(self, size: int, waited: bool) -> None:
        with self.group.cond:
            self._sizes[size] += 1
            self._waited += int(waited)
            self.records.append(BatchRecord(size, waited, time.monotonic()))

    # -- inspection ----------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        with self.group.cond:
            return summarize(self._sizes, self._waited, self._fallbacks) | {
                "max_batch": self.max_batch,
                "batch_wait_ms": self.batch_wait_ms,
                "queued": len(self._queue),
            }

    def reset_stats(self) -> None:
        with self.group.cond:
            self._sizes.clear()
            self._waited = self._fallbacks = 0
            self.records.clear()


def summarize(sizes: Counter[int], waited: int = 0, fallbacks: int = 0) -> dict[str, Any]:
    """``{batches, items, mean_size, max_size, sizes: {"n": count}, waited, fallbacks}``."""
    batches = sum(sizes.values())
    items = sum(n * c for n, c in sizes.items())
    return {
        "batches": batches,
        "items": items,
        "mean_size": round(items / batches, 2) if batches else 0.0,
        "max_size": max(sizes) if sizes else 0,
        "sizes": {str(n): sizes[n] for n in sorted(sizes)},
        "waited": waited,
        "fallbacks": fallbacks,
    }


def merge_stats(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """The ``summarize`` of several batchers' stats together (e.g. every operation of one model)."""
    sizes: Counter[int] = Counter()
    for part in parts:
        for n, c in part.get("sizes", {}).items():
            sizes[int(n)] += int(c)
    return summarize(sizes, sum(p.get("waited", 0) for p in parts), sum(p.get("fallbacks", 0) for p in parts))


def _finish(p: _Pending, result: Any = None, error: BaseException | None = None) -> None:
    p.result, p.error, p.finished = result, error, True
    p.wake.set()


def _safe_alive(alive: Callable[[], bool]) -> bool:
    try:
        return bool(alive())
    except Exception:  # noqa: BLE001 - a broken check keeps the item
        return True


def describe(stats: dict[str, Any]) -> str:
    """One line for people: ``"12 batches, 40 items, mean 3.33, max 8 (sizes 1x2 2x3 8x4)"``."""
    if not stats.get("batches"):
        return "no batches yet"
    sizes = " ".join(f"{n}x{c}" for n, c in stats.get("sizes", {}).items())
    return f"{stats['batches']} batches, {stats['items']} items, mean {stats['mean_size']:g}, max {stats['max_size']} (sizes {sizes})"
