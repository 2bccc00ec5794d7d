"""Session: what lives across the turns of a conversation and the calls of a tool session.

A ``Session`` owns

- the media store: ids (``img_0``), images tools added (video frames), per-image caches (a SAM
  image embedding is computed once per session);
- the region registry: every region id produced so far, with the tool, call and observation
  that produced it, so a later call can take ``det_1_0`` as input and a final answer may cite it;
- call numbering: tool-call numbers continue across turns (turn 2's first call is ``det_3_0`` if
  turn 1 made two calls); a failed call takes no number;
- turns and history: each finished turn's ``{question, answer, evidence, regions}`` and Answer.

``Agent.ask`` runs in a fresh session; ``Agent.chat`` / ``Conversation``, scenario turns, the
LangChain tool session and the HTTP server keep one. ``snapshot()`` is what a turn's trace
records about the session at the turn's start (``RunMeta.session``), so ``visagent replay`` can
rebuild it and reproduce any turn of a chat.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from visagent import ids
from visagent.errors import ForbiddenPathError, MediaError, ToolError
from visagent.media import MediaStore
from visagent.types import Answer, SessionState, ToolStep

if TYPE_CHECKING:  # pragma: no cover
    from visagent.config import Config
    from visagent.context import CallContext, Models
    from visagent.pool import ModelPool
    from visagent.tools.base import Region


@dataclass
class RegionRecord:
    """A registered region. ``step``: index of its tool step in the trace of the turn that made it,
    -1 once that turn is over (seen from a later turn); ``observation``: that step's observation."""

    region: "Region"
    tool: str
    step: int
    call: int
    observation: str = ""


def _region_class(name: str) -> type:
    """The Region subclass called ``name`` (Detection, Mask, ...), else Region itself."""
    from visagent.tools.base import Region

    todo = [Region]
    while todo:
        cls = todo.pop()
        if cls.__name__ == name:
            return cls
        todo.extend(cls.__subclasses__())
    return Region


def resolve_roots(roots: Sequence[str | Path] | None) -> list[Path] | None:
    return None if roots is None else [Path(r).expanduser().resolve() for r in roots]


def inside_roots(raw: str | Path, roots: Sequence[Path] | None) -> Path:
    """``raw`` resolved (symlinks followed); ``ForbiddenPathError`` unless it lies in one of ``roots``
    (None: any path is allowed, ``[]``: none is)."""
    long = next((part for part in Path(str(raw)).parts if len(part.encode()) > 255), None)
    if long is not None:
        raise MediaError(f"file name too long ({len(long.encode())} bytes; at most 255): {long[:40]}...")
    try:
        path = Path(os.path.expanduser(str(raw))).resolve()
    except (OSError, RuntimeError, ValueError):
        raise MediaError(f"bad path: {str(raw)[:200]!r}") from None
    if roots is not None and not any(path == root or path.is_relative_to(root) for root in roots):
        what = "paths are off here (no allowed roots)" if not roots else "path outside the allowed roots"
        raise ForbiddenPathError(f"{what}: {str(raw)[:200]}")
    return path


def session_property(name: str, doc: str = "") -> Any:
    """A read-only property that forwards to ``self.session.<name>`` (for objects built on a session)."""
    return property(lambda self: getattr(self.session, name), doc=doc or f"The session's ``{name}``.")


class Session:
    """Media, regions, call numbers and history shared by runs and calls (see module docstring)."""

    def __init__(
        self,
        config: "Config",
        pool: "ModelPool | None" = None,
        media: Sequence[Any] | MediaStore = (),
        allowed_roots: Sequence[str | Path] | None = None,
    ) -> None:
        """``allowed_roots``: folders that paths from outside must lie in (default
        ``config.limits.allowed_roots``; None there: any path)."""
        from visagent.context import Models
        from visagent.pool import ModelPool

        self.config = config
        self.roots = resolve_roots(allowed_roots if allowed_roots is not None else config.limits.allowed_roots)
        self.models: Models = Models(config, pool or ModelPool(config.pool.budget_bytes))
        limits = config.limits
        if isinstance(media, MediaStore):
            self.media = media
        else:
            self.media = MediaStore(limits.max_pixels, limits.allow_urls, limits.max_video_pixels)
        self.regions: dict[str, RegionRecord] = {}
        self.calls = 0  # the last call number handed out
        self.history: list[dict[str, Any]] = []
        self.answers: list[Answer] = []
        self._sources: dict[str, str] = {}
        self.lock = threading.RLock()
        if not isinstance(media, MediaStore):
            for source in media:  # bad media fail here, before anything runs
                self.add_media(source)

    # -- media --------------------------------------------------------------------------------
    def add_media(self, source: Any) -> str:
        """Register an image / video (path, ``sample:NAME``, URL, PIL image, array, bytes); returns its
        id. The same path or sample name given twice gets the same id."""
        with self.lock:
            key = source if isinstance(source, str) else None
            if key is not None and key in self._sources:
                return self._sources[key]
            if self.roots is not None and isinstance(source, (str, os.PathLike)) and not str(source).startswith(("sample:", "http://", "https://")):
                self.check_path(source)
            media_id = self.media.add(source)
            if key is not None:
                self._sources[key] = media_id
            return media_id

    def check_path(self, raw: str | Path) -> Path:
        """A path from outside, resolved; ``ForbiddenPathError`` when it lies outside the roots."""
        return inside_roots(raw, self.roots)

    def media_id(self, value: str) -> str:
        """A known media id, or ``MediaError`` listing the known ones."""
        if value in self.media:
            return value
        known = ", ".join(self.media.ids()) or "none yet"
        raise MediaError(f"unknown media id '{value}'; known: {known}")

    # -- calls and regions --------------------------------------------------------------------
    def next_call(self) -> int:
        with self.lock:
            self.calls += 1
            return self.calls

    def release_call(self, call: int) -> None:
        """A failed call gives its number back (ids stay dense) when no later call took one."""
        with self.lock:
            if self.calls == call:
                self.calls -= 1

    def open_call(self, progress: Any = None) -> "CallContext":
        """The context for one direct tool call (``tool.run(inp, ctx)``) with the next call number."""
        from visagent.context import CallContext

        return CallContext(self, self.models, self.next_call(), progress)

    def record(self, regions: "Sequence[Region]", tool: str, step: int, call: int, observation: str = "") -> None:
        with self.lock:
            for region in regions:
                self.regions[region.id] = RegionRecord(region, tool, step, call, observation)

    def region(self, region_id: str) -> "Region":
        record = self.regions.get(region_id)
        if record is None:
            hint = "" if ids.REGION_SHAPE_RE.match(str(region_id)) else " (region ids look like det_2_0)"
            known = ", ".join(list(self.regions)[:20]) or "none yet"
            raise ToolError(f"unknown region id '{region_id}'{hint}; known: {known}")
        return record.region

    # -- turns --------------------------------------------------------------------------------
    def snapshot(self) -> SessionState | None:
        """What a turn's trace records of the session at its start (None for a fresh session)."""
        with self.lock:
            if not self.calls and not self.history and not self.regions:
                return None
            return SessionState(
                calls=self.calls,
                history=[dict(h) for h in self.history],
                regions=[
                    {
                        "id": rid,
                        "tool": r.tool,
                        "call": r.call,
                        "observation": r.observation,
                        "type": type(r.region).__name__,
                        "region": r.region.model_dump(mode="json"),
                    }
                    for rid, r in self.regions.items()
                ],
            )

    def restore(self, state: SessionState | None) -> None:
        """Take over a recorded ``snapshot()`` (replay of a later turn)."""
        if state is None:
            return
        with self.lock:
            self.calls = state.calls
            self.history = [dict(h) for h in state.history]
            for item in state.regions:
                cls = _region_class(str(item.get("type", "Region")))
                region = cls.model_validate(item["region"])
                self.regions[item["id"]] = RegionRecord(region, item["tool"], -1, int(item["call"]), item.get("observation", ""))

    def end_turn(self, question: str, answer: Answer) -> None:
        """Keep a finished turn: its regions stay citable (``step = -1`` from now on; each record
        keeps its observation), its question / answer / evidence join the history."""
        with self.lock:
            new_regions = [rid for rid, record in self.regions.items() if record.step >= 0]
            for rid in new_regions:
                self.regions[rid] = replace(self.regions[rid], step=-1)
            self.history.append(
                {
                    "question": question,
                    "answer": answer.answer if answer.ok else f"(no answer: {answer.error})",
                    "evidence": [e.id for e in answer.evidence if e.kind == "region"],
                    "regions": new_regions,
                }
            )
            self.answers.append(answer)


_MEDIA_FIELD = re.compile(r"image|video|media|frame")


class CallSession(Session):
    """A ``Session`` driven call by call from outside the agent loop (LangChain tools, MCP tools):
    media, region ids and call numbers persist from call to call, and every call runs through the
    agent's ``ToolRunner``. ``steps``: every call's ``ToolStep`` / ``ErrorStep`` in order.

    Media arguments (fields whose name mentions image, video, media or frame) take a media id
    (``img_0``), a file path (inside the allowed roots), ``sample:NAME``, a URL (where URLs are
    allowed), a ``data:...;base64,`` URL or an MCP embedded resource ``{"uri", "mimeType",
    "blob"}`` (base64); a new one is registered and its id reported at the end
    of the content (``[media: photo.jpg = img_0]``).
    """

    def __init__(self, agent: Any, media: Sequence[Any] = (), allowed_roots: Sequence[str | Path] | None = None) -> None:
        super().__init__(agent.config, agent.pool, media, allowed_roots=allowed_roots)
        self.agent = agent
        self.steps: list[Any] = []

    def _emit(self, step: Any) -> Any:
        step.index = len(self.steps)
        self.steps.append(step)
        return step

    def _resolve(self, value: Any, added: list[tuple[str, str]]) -> Any:
        if isinstance(value, list):
            return [self._resolve(v, added) for v in value]
        if isinstance(value, dict) and isinstance(value.get("blob"), str):  # an MCP embedded resource {uri, mimeType, blob}
            media_id = self.add_media(_data_url("data:;base64," + value["blob"]))
            added.append((str(value.get("uri") or "resource"), media_id))
            return media_id
        if not isinstance(value, str) or value in self.media:
            return value
        if ids.MEDIA_RE.match(value):
            self.media_id(value)  # unknown media id: MediaError listing the known ones
        fresh = value not in self._sources
        if value.startswith("data:"):
            media_id = self.add_media(_data_url(value))
            label = "data URL"
        else:
            media_id, label = self.add_media(value), value
        if fresh:
            added.append((label, media_id))
        return media_id

    def call_tool(self, name: str, args: dict[str, Any], progress: Any = None) -> tuple[str, Any]:
        """Run tool ``name`` with ``args`` -> (content text, typed output); ``ToolError`` /
        ``UsageError`` with a one-line reason for bad arguments, bad media and tool failures.
        ``progress(message, done, total)`` hears from long tools (gallery indexing, video)."""
        with self.lock:
            added: list[tuple[str, str]] = []
            args = {k: self._resolve(v, added) if _MEDIA_FIELD.search(k) else v for k, v in args.items()}
            result = self.agent.runner.call(self, name, args, emit=self._emit, progress=progress)
            if not isinstance(result.step, ToolStep) or result.output is None:
                raise ToolError(result.step.message)
            observation = result.step.observation
        if added:
            observation += " [media: " + "; ".join(f"{src} = {mid}" for src, mid in added) + "]"
        return observation, result.output


def _data_url(url: str) -> bytes:
    import base64
    import binascii

    header, _, data = url.partition(",")
    try:
        raw = base64.b64decode(data, validate=True) if ";base64" in header else data.encode()
    except (binascii.Error, ValueError):
        raise MediaError("the data URL is not valid base64") from None
    if not raw:
        raise MediaError("the data URL is empty")
    return raw
