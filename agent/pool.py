"""ModelPool: every loaded model lives here, shared by all tools and concurrent runs.

- Lazy: a model loads on first use, keyed by (family, checkpoint, device, dtype); concurrent
  first uses load it once.
- A lock per model: ``with pool.use(key, loader) as model:`` holds it for the duration of a call.
- Batchers per model and operation (``pool.batcher(key, op, run)``, ``visagent.batching``): concurrent
  calls gathered into one forward; the batch's ``run`` holds the model through ``use`` while it runs.
  ``stats()`` reports them per model (``batching``: batches, items, mean / max size, size histogram).
- A memory budget (bytes) with least-recently-used eviction; a model in use is never evicted.
  Size = bytes of parameters and buffers (and the CUDA memory the load took, where larger).
"""

from __future__ import annotations

import gc
import logging
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, NamedTuple

log = logging.getLogger(__name__)


class ModelKey(NamedTuple):
    family: str
    checkpoint: str
    device: str
    dtype: str

    def __str__(self) -> str:
        return f"{self.family}:{self.checkpoint}@{self.device}/{self.dtype}"


@dataclass
class _Entry:
    key: ModelKey
    value: Any = None
    nbytes: int = 0
    lock: threading.RLock = field(default_factory=threading.RLock)
    users: int = 0
    loads: int = 0
    uses: int = 0
    load_ms: float = 0.0
    last_used: float = 0.0
    loaded: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None


def resolve_device(device: str = "auto") -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_dtype(dtype: str, device: str) -> str:
    """``auto``: bfloat16 on a GPU that supports it (else float16), float32 on the CPU."""
    if dtype != "auto":
        return dtype
    if device.startswith("cuda"):
        import torch

        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    return "float32"


def torch_dtype(name: str) -> Any:
    import torch

    try:
        return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]
    except KeyError:
        from visagent.errors import UsageError

        raise UsageError(f"unknown dtype '{name}'; use float32, float16, bfloat16 or auto") from None


def _modules(value: Any, depth: int = 0) -> Iterator[Any]:
    import torch

    if isinstance(value, torch.nn.Module):
        yield value
    elif depth < 2:
        if isinstance(value, dict):
            items = list(value.values())
        elif isinstance(value, (list, tuple)):
            items = list(value)
        elif hasattr(value, "__dict__"):
            items = list(vars(value).values())
        else:
            items = []
        for item in items:
            yield from _modules(item, depth + 1)


def model_nbytes(value: Any) -> int:
    """Bytes of the parameters and buffers of every torch module in ``value`` (counted once)."""
    seen: set[int] = set()
    total = 0
    for module in _modules(value):
        for tensor in list(module.parameters()) + list(module.buffers()):
            ptr = tensor.data_ptr()
            if ptr in seen:
                continue
            seen.add(ptr)
            total += tensor.numel() * tensor.element_size()
    return total


class ModelPool:
    """Loaded models under a memory budget (``budget_bytes``; None = unlimited)."""

    def __init__(self, budget_bytes: int | None = None) -> None:
        self.budget_bytes = budget_bytes
        self._entries: OrderedDict[ModelKey, _Entry] = OrderedDict()
        self._lock = threading.Lock()
        self.evictions = 0
        self._listeners: list[Callable[[str, ModelKey, dict[str, Any]], None]] = []
        self._batchers: dict[ModelKey, dict[str, Any]] = {}
        self._groups: dict[ModelKey, Any] = {}

    def add_listener(self, fn: Callable[[str, ModelKey, dict[str, Any]], None]) -> None:
        """Call ``fn(event, key, info)`` around loads: ``"loading"`` (info ``{}``), then ``"loaded"``
        (``{"ms", "bytes"}``) or ``"failed"`` (``{"error"}``) — e.g. to show progress while a large
        checkpoint loads. Listener errors are logged, never raised."""
        self._listeners.append(fn)

    def _notify(self, event: str, key: ModelKey, info: dict[str, Any]) -> None:
        for fn in list(self._listeners):
            try:
                fn(event, key, info)
            except Exception:  # noqa: BLE001 - a display problem must not fail a load
                log.exception("model pool listener failed")

    # -- use ---------------------------------------------------------------------------------
    @contextmanager
    def use(self, key: ModelKey, loader: Callable[[], Any]) -> Iterator[Any]:
        """Yield the loaded model for ``key`` (loading it with ``loader()`` if needed), locked."""
        entry = self._acquire(key, loader)
        try:
            with entry.lock:
                entry.uses += 1
                entry.last_used = time.monotonic()
                yield entry.value
        finally:
            with self._lock:
                entry.users -= 1

    def peek(self, key: ModelKey, loader: Callable[[], Any]) -> Any:
        """The loaded model (loading it if needed) without waiting for its lock: for reading its
        attributes while a batch may be running on it."""
        entry = self._acquire(key, loader)
        with self._lock:
            entry.users -= 1
        return entry.value

    def get(self, key: ModelKey, loader: Callable[[], Any]) -> Any:
        """The loaded model, without holding its lock (for callers that lock themselves)."""
        with self.use(key, loader) as value:
            return value

    def _acquire(self, key: ModelKey, loader: Callable[[], Any]) -> _Entry:
        with self._lock:
            entry = self._entries.get(key)
            owner = entry is None
            if owner:
                entry = _Entry(key)
                self._entries[key] = entry
            entry.users += 1
            self._entries.move_to_end(key)
        if owner:
            self._load(entry, loader)
        else:
            entry.loaded.wait()
        if entry.error is not None:
            with self._lock:
                entry.users -= 1
            raise entry.error
        return entry

    def _load(self, entry: _Entry, loader: Callable[[], Any]) -> None:
        before = _cuda_allocated()
        start = time.perf_counter()
        self._notify("loading", entry.key, {})
        try:
            try:
                entry.value = loader()
            except BaseException as exc:
                # out of device memory: make room by evicting the models nobody is using, then try once more
                if not is_out_of_memory(exc) or not self.free_idle(keep=entry.key):
                    raise
                log.warning("out of memory loading %s: evicted idle models, retrying", entry.key)
                entry.value = loader()
        except BaseException as exc:
            self._notify("failed", entry.key, {"error": str(exc).splitlines()[0] if str(exc) else type(exc).__name__})
            entry.error = exc
            with self._lock:
                if self._entries.get(entry.key) is entry:
                    del self._entries[entry.key]
            entry.loaded.set()
            return
        entry.load_ms = (time.perf_counter() - start) * 1000
        entry.loads += 1
        entry.nbytes = max(model_nbytes(entry.value), _cuda_allocated() - before)
        log.info("loaded %s (%.1f MB) in %.0f ms", entry.key, entry.nbytes / 1e6, entry.load_ms)
        self._notify("loaded", entry.key, {"ms": round(entry.load_ms, 1), "bytes": entry.nbytes})
        entry.loaded.set()
        self._enforce_budget(keep=entry.key)

    def _enforce_budget(self, keep: ModelKey) -> None:
        if self.budget_bytes is None:
            return
        victims = []
        with self._lock:
            total = sum(e.nbytes for e in self._entries.values())
            for key, entry in list(self._entries.items()):  # least recently used first
                if total <= self.budget_bytes:
                    break
                if key == keep or entry.users > 0 or not entry.loaded.is_set():
                    continue
                del self._entries[key]
                total -= entry.nbytes
                victims.append(entry)
            if total > self.budget_bytes:
                log.warning(
                    "model memory %.1f MB is over the pool budget %.1f MB (models in use cannot be evicted)",
                    total / 1e6,
                    self.budget_bytes / 1e6,
                )
        self._release(victims, "")

    def _release(self, victims: list[_Entry], why: str) -> None:
        """Drop the models of entries already removed from the pool and free device memory."""
        for entry in victims:
            with entry.lock:
                entry.value = None
            self.evictions += 1
            log.info("evicted %s (%.1f MB)%s", entry.key, entry.nbytes / 1e6, why)
        if victims:
            _free_memory()

    # -- batching ----------------------------------------------------------------------------
    def batch_group(self, key: ModelKey) -> Any:
        """The ``visagent.batching.BatchGroup`` of ``key`` (shared by its operations' batchers)."""
        from visagent.batching import BatchGroup

        with self._lock:
            group = self._groups.get(key)
            if group is None:
                group = self._groups[key] = BatchGroup()
            return group

    def batcher(self, key: ModelKey, op: str, run: Callable[[list[Any]], list[Any]], *, max_batch: int, batch_wait_ms: float) -> Any:
        """The ``visagent.batching.Batcher`` of operation ``op`` of model ``key``, made on first use
        with ``run(items) -> results`` (which must hold the model with ``use`` while it runs); later
        calls update its limits. Batchers outlive an eviction: the next batch loads the model again."""
        from visagent.batching import Batcher

        group = self.batch_group(key)
        with self._lock:
            ops = self._batchers.setdefault(key, {})
            b = ops.get(op)
            if b is None:
                b = ops[op] = Batcher(run, max_batch=max_batch, batch_wait_ms=batch_wait_ms, group=group, name=f"{key} {op}")
                return b
        if b.max_batch != max_batch or b.batch_wait_ms != batch_wait_ms:
            b.configure(max_batch, batch_wait_ms)
        return b

    def batch_stats(self, key: ModelKey | None = None) -> dict[str, Any]:
        """Batch statistics of one model (all its operations together, and ``ops`` per operation),
        or, without ``key``, of every model that has batched: ``{str(key): stats}``."""
        from visagent.batching import merge_stats

        with self._lock:
            items = list(self._batchers.items())
        out: dict[str, Any] = {}
        for k, ops in items:
            if key is not None and k != key:
                continue
            per_op = {op: b.stats() for op, b in ops.items()}
            out[str(k)] = merge_stats(list(per_op.values())) | {"ops": per_op}
        if key is not None:
            return out.get(str(key), {})
        return out

    def reset_batch_stats(self) -> None:
        with self._lock:
            batchers = [b for ops in self._batchers.values() for b in ops.values()]
        for b in batchers:
            b.reset_stats()

    # -- inspection --------------------------------------------------------------------------
    def resident(self, key: ModelKey) -> bool:
        with self._lock:
            entry = self._entries.get(key)
            return entry is not None and entry.loaded.is_set() and entry.error is None

    def free_idle(self, keep: ModelKey | None = None, keep_families: tuple[str, ...] = ()) -> int:
        """Evict every loaded model not in use (except ``keep`` and ``keep_families``) and free
        device memory; returns how many were evicted. Used to recover from out-of-memory errors."""
        victims = []
        with self._lock:
            for key, entry in list(self._entries.items()):
                if key == keep or key.family in keep_families or entry.users > 0 or not entry.loaded.is_set():
                    continue
                del self._entries[key]
                victims.append(entry)
        self._release(victims, " to free memory")
        return len(victims)

    def evict(self, key: ModelKey) -> bool:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or entry.users > 0:
                return False
            del self._entries[key]
        entry.value = None
        self.evictions += 1
        _free_memory()
        return True

    def clear(self) -> None:
        for key in list(self._entries):
            self.evict(key)

    def stats(self) -> dict[str, Any]:
        """``{budget_bytes, used_bytes, evictions, models: [{key, bytes, loads, uses, load_ms, in_use,
        batching?}], batching: {batches, items, mean_size, max_size, sizes}}``; ``batching`` (per model,
        when it has batched) is ``batch_stats(key)``, the top-level one all models together."""
        from visagent.batching import merge_stats

        batching = self.batch_stats()
        with self._lock:
            models = [
                {
                    "key": str(e.key),
                    "family": e.key.family,
                    "checkpoint": e.key.checkpoint,
                    "device": e.key.device,
                    "dtype": e.key.dtype,
                    "bytes": e.nbytes,
                    "loads": e.loads,
                    "uses": e.uses,
                    "load_ms": round(e.load_ms, 1),
                    "in_use": e.users > 0,
                }
                for e in self._entries.values()
                if e.loaded.is_set() and e.error is None
            ]
        for m in models:
            if m["key"] in batching:
                m["batching"] = batching[m["key"]]
        return {
            "budget_bytes": self.budget_bytes,
            "used_bytes": sum(m["bytes"] for m in models),
            "evictions": self.evictions,
            "models": models,
            "batching": merge_stats(list(batching.values())),
        }


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is a device out-of-memory error (CUDA, MPS or CPU allocator)."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(exc, getattr(torch.cuda, "OutOfMemoryError", ())):
        return True
    return isinstance(exc, (RuntimeError, MemoryError)) and "out of memory" in str(exc).lower()


def _cuda_allocated() -> int:
    import sys

    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return 0
    return int(torch.cuda.memory_allocated())


def _free_memory() -> None:
    gc.collect()
    import sys

    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
