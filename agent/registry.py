"""The tool registry: the built-in tools (an explicit list) and plugins from installed packages.

A plugin distribution declares entry points in the ``visagent.tools`` group, each naming a
``Tool`` subclass, or a list / tuple of them, or a function returning one of those::

    [project.entry-points."visagent.tools"]
    blur = "visagent_blur:BlurTool"

``load_tools()`` returns built-ins then plugins, ``{name: Tool class}``. A plugin that fails to
load, declares something that is not a tool, or reuses a taken name is skipped with a one-line
warning naming it (``plugin_problems()`` lists them); it never breaks the others. ``tool_origins()``
says where each tool comes from (``builtin`` or ``plugin DIST (ENTRY)``).

Tool modules import heavy libraries (torch, transformers) lazily, inside loaders and ``run``, so
listing tools stays fast.
"""

from __future__ import annotations

import importlib
import logging
import threading
from collections.abc import Callable
from importlib.metadata import EntryPoint, entry_points

from visagent.errors import UsageError
from visagent.tools.base import Tool

log = logging.getLogger(__name__)

GROUP = "visagent.tools"

#: the built-in tools, as (module, class) pairs
BUILTIN_TOOLS: tuple[tuple[str, str], ...] = (
    ("visagent.tools.caption", "Caption"),
    ("visagent.tools.caption", "Vqa"),
    ("visagent.tools.detect", "Detect"),
    ("visagent.tools.detect", "Count"),
    ("visagent.tools.segment", "Segment"),
    ("visagent.tools.search", "Search"),
    ("visagent.tools.search", "Classify"),
    ("visagent.tools.ocr", "Ocr"),
    ("visagent.tools.video", "VideoFrames"),
    ("visagent.tools.video", "VideoQA"),
    ("visagent.tools.segment_video", "SegmentVideo"),
    ("visagent.tools.track", "Track"),
)

#: modules that register model loaders (``visagent.tools.models``) without defining a tool
MODEL_MODULES: tuple[str, ...] = ("visagent.tools.planner_models",)

_lock = threading.Lock()
_builtins: dict[str, type[Tool]] | None = None
_plugins: dict[str, type[Tool]] | None = None
_origins: dict[str, str] = {}
_problems: list[str] = []


def load_builtin_tools() -> dict[str, type[Tool]]:
    """``{name: Tool class}`` of the built-in tools, sorted by name (their modules imported once)."""
    global _builtins
    with _lock:
        if _builtins is None:
            found: dict[str, type[Tool]] = {}
            for module, attr in BUILTIN_TOOLS:
                cls = getattr(importlib.import_module(module), attr)
                found[cls.name] = cls
                _origins[cls.name] = "builtin"
            _builtins = dict(sorted(found.items()))
        return dict(_builtins)


def _entry_tools(ep: EntryPoint) -> list[type[Tool]]:
    value = ep.load()
    if callable(value) and not isinstance(value, type):
        value = value()
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    bad = [repr(v) for v in items if not (isinstance(v, type) and issubclass(v, Tool) and "name" in v.__dict__)]
    if bad or not items:
        raise TypeError(f"declares {', '.join(bad) or 'nothing'}, not a visagent Tool subclass")
    return items


def load_plugin_tools(report: Callable[[str], None] | None = None) -> dict[str, type[Tool]]:
    """``{name: Tool class}`` from the ``visagent.tools`` entry points of installed packages. Each
    skipped plugin is told once, to ``report`` (default: a warning in the log)."""
    global _plugins
    builtins = load_builtin_tools()
    with _lock:
        if _plugins is None:
            found: dict[str, type[Tool]] = {}
            for ep in sorted(entry_points(group=GROUP), key=lambda e: e.name):
                dist = getattr(getattr(ep, "dist", None), "name", None) or "?"
                where = f"plugin {dist} ({ep.name} = {ep.value})"
                try:
                    classes = _entry_tools(ep)
                except Exception as exc:  # noqa: BLE001 - a broken plugin must not break the others
                    first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                    _warn(f"tool plugin {ep.name!r} from {dist} skipped: {type(exc).__name__}: {first}", report)
                    continue
                for cls in classes:
                    if cls.name in builtins or cls.name in found:
                        _warn(f"tool plugin {ep.name!r} from {dist} skipped: tool name '{cls.name}' is taken ({_origins.get(cls.name)})", report)
                        continue
                    found[cls.name] = cls
                    _origins[cls.name] = where
            _plugins = dict(sorted(found.items()))
        return dict(_plugins)


def _warn(message: str, report: Callable[[str], None] | None) -> None:
    if message not in _problems:
        _problems.append(message)
        (report or (lambda m: log.warning("%s", m)))(message)


def load_tools(report: Callable[[str], None] | None = None) -> dict[str, type[Tool]]:
    """Built-in tools, then plugin tools (``report``: see ``load_plugin_tools``)."""
    return {**load_builtin_tools(), **load_plugin_tools(report)}


def load_model_modules() -> None:
    """Import every module that registers model loaders: the tools' and ``MODEL_MODULES``."""
    load_tools()
    for module in MODEL_MODULES:
        importlib.import_module(module)


def tool_origins() -> dict[str, str]:
    """``{name: "builtin" | "plugin DIST (ENTRY = VALUE)"}`` of every tool ``load_tools`` returns."""
    load_tools()
    return dict(_origins)


def plugin_problems() -> list[str]:
    """One line per plugin that was skipped, and why."""
    load_tools()
    return list(_problems)


def get_tool(name: str) -> type[Tool]:
    tools = load_tools()
    try:
        return tools[name]
    except KeyError:
        raise UsageError(f"unknown tool '{name}'; available: {', '.join(tools) or 'none'}") from None


def reset() -> None:
    """Forget the loaded plugins (after installing one in a running process; tests)."""
    global _plugins
    with _lock:
        _plugins = None
        _problems.clear()
        for name in [n for n, o in _origins.items() if o != "builtin"]:
            del _origins[name]
