"""CallContext: what a tool sees while it runs (media, regions, models, progress); Models: the
configured checkpoints served from the pool.

Two ways for a tool to use a model:

- ``with ctx.model(family) as bundle:`` — the loaded bundle, its lock held for the whole block
  (tools that drive a model through many steps, e.g. a gallery index or a video).
- ``with ctx.batched(family) as m: m.submit("detect_many", request)`` — the call goes through the
  model's batcher (``visagent.batching``): concurrent calls from other runs are gathered into one
  forward of at most ``models.<family>.max_batch`` items; ``m.model`` is the bundle for reading
  attributes only (``kind``, ``backend``), not for running it.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from PIL import Image

from visagent import ids
from visagent.config import Config
from visagent.errors import ToolError, UsageError
from visagent.media import MediaStore
from visagent.pool import ModelKey, ModelPool, resolve_device, resolve_dtype, torch_dtype
from visagent.tools.base import Region

if TYPE_CHECKING:  # pragma: no cover
    from visagent.session import Session


class Models:
    """Resolves a family to its configured checkpoint and serves it from the pool."""

    def __init__(self, config: Config, pool: ModelPool) -> None:
        self.config = config
        self.pool = pool
        self._resolved: dict[tuple[str, str, str], str] = {}
        self._lock = threading.Lock()

    def key(self, family: str) -> tuple[ModelKey, str, str]:
        mc = self.config.model(family)
        device = resolve_device(mc.device or self.config.device)
        dtype = resolve_dtype(mc.dtype or self.config.dtype, device)
        # the same tiny name serves both backends: the backend is part of what identifies the model
        ckpt_key = mc.checkpoint if mc.backend == "transformers" else f"{mc.checkpoint}@{mc.backend}"
        if mc.options:  # loader options may change what is loaded (e.g. another config or text encoder)
            ckpt_key += "#" + json.dumps(mc.options, sort_keys=True, default=str)
        return ModelKey(family, ckpt_key, device, dtype), mc.backend, mc.checkpoint

    def resolve(self, family: str) -> str:
        from visagent.checkpoints import resolve_checkpoint

        mc = self.config.model(family)
        cache_key = (family, mc.backend, mc.checkpoint)
        with self._lock:
            if cache_key not in self._resolved:
                self._resolved[cache_key] = resolve_checkpoint(
                    mc.checkpoint,
                    family=family,
                    backend=mc.backend,
                    cache_dir=self.config.cache_path,
                    revision=mc.revision,
                )
            return self._resolved[cache_key]

    def _loader(self, family: str) -> tuple[ModelKey, Callable[[], Any]]:
        from visagent.registry import load_model_modules
        from visagent.tools.models import loader_for

        remote = getattr(self.pool, "serves_remotely", None)
        served_elsewhere = bool(remote is not None and remote(family))  # e.g. a Ray Serve deployment loads it
        if not served_elsewhere and not self.config.model(family).checkpoint.startswith("tiny:"):
            self.resolve(family)  # a checkpoint that cannot be had fails here, before the libraries load
        load_model_modules()
        key, backend, _ = self.key(family)
        loader = loader_for(family, backend)
        if loader is None:
            raise UsageError(f"no '{backend}' backend for {family}; check models.{family}.backend in your config")
        mc = self.config.model(family)

        def load() -> Any:
            return loader(self.resolve(family), key.device, torch_dtype(key.dtype), dict(mc.options))

        return key, load

    @contextmanager
    def use(self, family: str) -> Iterator[Any]:
        key, load = self._loader(family)
        with self.pool.use(key, load) as model:
            yield model

    @contextmanager
    def batched(self, family: str, alive: Callable[[], bool] | None = None) -> Iterator["BatchedModel"]:
        """Announce a call to ``family``'s batcher for the block (see ``visagent.batching``) and
        yield a ``BatchedModel`` to submit items with."""
        key, load = self._loader(family)
        handle = BatchedModel(self, family, key, load, alive)
        with self.pool.batch_group(key).expect():
            yield handle


class BatchedModel:
    """One call's door to a model's batchers: ``submit(op, item)`` runs ``bundle.<op>([item, ...])``
    in a gathered forward and returns this item's result; ``model``: the loaded bundle (attributes
    only — running it directly bypasses the batcher and the model lock)."""

    def __init__(self, models: Models, family: str, key: ModelKey, load: Callable[[], Any], alive: Callable[[], bool] | None) -> None:
        self.family = family
        self.key = key
        self._models = models
        self._load = load
        self._alive = alive

    @property
    def model(self) -> Any:
        return self._models.pool.peek(self.key, self._load)

    def submit(self, op: str, item: Any) -> Any:
        pool, key, load = self._models.pool, self.key, self._load
        mc = self._models.config.model(self.family)

        def run(items: list[Any]) -> list[Any]:
            with pool.use(key, load) as bundle:
                return list(getattr(bundle, op)(items))

        batcher = pool.batcher(key, op, run, max_batch=mc.max_batch, batch_wait_ms=mc.batch_wait_ms)
        return batcher.submit(item, self._alive)


class CallContext:
    """Implements ``visagent.tools.base.ToolContext`` for one tool call.

    Each call gets its own context (``Session.open_call``, or the ``ToolRunner``): its number, its
    cache events and the models it used. Once the call is over (finished, failed or timed out) the
    context is closed: a tool thread still running after a timeout can no longer make region ids,
    add images or touch caches, so nothing it does reaches a later call.
    """

    def __init__(self, session: "Session", models: Models, call: int, progress: Callable[[str, int, int], None] | None = None) -> None:
        self.session = session
        self.config = models.config
        self.models_ = models
        self.call = call
        self.cache: dict[str, str] = {}
        self.models: list[str] = []
        self._progress = progress
        self.closed = False

    def close(self) -> None:
        self.closed = True

    def _live(self) -> None:
        if self.closed:
            raise ToolError(f"call {self.call} is over (it timed out or failed); its results are discarded")

    @property
    def media(self) -> MediaStore:
        return self.session.media

    # -- ToolContext -------------------------------------------------------------------------
    def image(self, media_id: str) -> Image.Image:
        return self.session.media.image(media_id)

    def image_ids(self) -> list[str]:
        return self.session.media.ids("image")

    def media_cache(self, media_id: str) -> dict[str, Any]:
        self._live()
        return self.session.media.cache(media_id)

    def video_path(self, media_id: str) -> str:
        return str(self.session.media.video_path(media_id))

    def add_image(self, image: Image.Image, source: str, **info: Any) -> str:
        self._live()
        return self.session.media.add_image(image, source, **info)

    def region(self, region_id: str) -> Region:
        return self.session.region(region_id)

    def region_id(self, prefix: str, index: int) -> str:
        self._live()
        return ids.format_region_id(prefix, self.call, index)

    @contextmanager
    def model(self, family: str) -> Iterator[Any]:
        """``with ctx.model("segment") as bundle:`` — the family's loaded model, locked for the call."""
        self._live()
        key, _, checkpoint = self.models_.key(family)
        if checkpoint not in self.models:
            self.models.append(checkpoint)
        with self.models_.use(family) as bundle:
            yield bundle

    @contextmanager
    def batched(self, family: str) -> Iterator[BatchedModel]:
        """``with ctx.batched("detect") as m: m.submit("detect_many", request)`` — the call goes
        through the family's batcher, gathered with concurrent calls of other runs; a call that is
        over (timed out) is dropped from the queue."""
        self._live()
        _, _, checkpoint = self.models_.key(family)
        if checkpoint not in self.models:
            self.models.append(checkpoint)
        with self.models_.batched(family, alive=lambda: not self.closed) as handle:
            yield handle

    def model_key(self, family: str) -> ModelKey:
        return self.models_.key(family)[0]

    def tool_config(self, tool: str) -> Any:
        return self.config.models.get(tool)

    def progress(self, message: str, done: int, total: int) -> None:
        if self._progress is not None and not self.closed:
            self._progress(message, done, total)
