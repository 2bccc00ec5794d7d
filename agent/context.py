"""RunContext: what tools see while they run (media, regions, models, progress)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from PIL import Image

from agent.config import Config
from agent.errors import ToolError, UsageError
from agent.media import MediaStore
from agent.pool import ModelKey, ModelPool, resolve_device, resolve_dtype, torch_dtype
from tools.base import REGION_ID_RE, Region


@dataclass
class RegionRecord:
    region: Region
    tool: str
    step: int  # index of the tool step in the trace
    call: int


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
        from agent.checkpoints import resolve_checkpoint

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

    @contextmanager
    def use(self, family: str) -> Iterator[Any]:
        from agent.registry import load_builtin_tools
        from tools.models import loader_for

        load_builtin_tools()
        key, backend, _ = self.key(family)
        loader = loader_for(family, backend)
        if loader is None:
            raise UsageError(f"no '{backend}' backend for {family}; check models.{family}.backend in your config")
        mc = self.config.model(family)

        def load() -> Any:
            return loader(self.resolve(family), key.device, torch_dtype(key.dtype), dict(mc.options))

        with self.pool.use(key, load) as model:
            yield model


class RunContext:
    """Implements ``tools.base.ToolContext`` for one run."""

    def __init__(
        self,
        config: Config,
        pool: ModelPool,
        media: MediaStore,
        progress: Callable[[str, int, int], None] | None = None,
    ) -> None:
        self.config = config
        self.pool = pool
        self.media = media
        self.models_ = Models(config, pool)
        self.regions: dict[str, RegionRecord] = {}
        self.call = 0
        self.cache: dict[str, str] = {}
        self.models: list[str] = []
        self._progress = progress

    # -- per call ----------------------------------------------------------------------------
    def begin_call(self) -> int:
        self.call += 1
        self.cache = {}
        self.models = []
        return self.call

    def end_failed_call(self) -> None:
        self.call -= 1

    def record_regions(self, regions: list[Region], tool: str, step: int) -> None:
        for region in regions:
            self.regions[region.id] = RegionRecord(region, tool, step, self.call)

    # -- ToolContext -------------------------------------------------------------------------
    def image(self, media_id: str) -> Image.Image:
        return self.media.image(media_id)

    def image_ids(self) -> list[str]:
        return self.media.ids("image")

    def media_cache(self, media_id: str) -> dict[str, Any]:
        return self.media.cache(media_id)

    def video_path(self, media_id: str) -> str:
        return str(self.media.video_path(media_id))

    def add_image(self, image: Image.Image, source: str, **info: Any) -> str:
        return self.media.add_image(image, source, **info)

    def region(self, region_id: str) -> Region:
        record = self.regions.get(region_id)
        if record is None:
            hint = "" if REGION_ID_RE.match(region_id) else " (region ids look like det_2_0)"
            known = ", ".join(list(self.regions)[:20]) or "none yet"
            raise ToolError(f"unknown region id '{region_id}'{hint}; known: {known}")
        return record.region

    def region_id(self, prefix: str, index: int) -> str:
        return f"{prefix}_{self.call}_{index}"

    @contextmanager
    def model(self, family: str) -> Iterator[Any]:
        """``with ctx.model("segment") as bundle:`` — the family's loaded model, locked for the call."""
        key, _, checkpoint = self.models_.key(family)
        if checkpoint not in self.models:
            self.models.append(checkpoint)
        with self.models_.use(family) as bundle:
            yield bundle

    def model_key(self, family: str) -> ModelKey:
        return self.models_.key(family)[0]

    def tool_config(self, tool: str) -> Any:
        return self.config.models.get(tool)

    def progress(self, message: str, done: int, total: int) -> None:
        if self._progress is not None:
            self._progress(message, done, total)
