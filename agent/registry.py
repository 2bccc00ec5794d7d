"""The built-in tool registry: every ``Tool`` subclass defined in a module of the ``tools`` package.

Tool modules import heavy libraries (torch, transformers) lazily, inside loaders and ``run``, so
listing tools stays fast.
"""

from __future__ import annotations

import importlib
import pkgutil
import threading

from agent.errors import UsageError
from tools.base import Tool

_SKIP = {"base", "models"}
_lock = threading.Lock()
_tools: dict[str, type[Tool]] | None = None


def load_builtin_tools() -> dict[str, type[Tool]]:
    """Import every ``tools.*`` module once and return ``{name: Tool class}`` sorted by name."""
    global _tools
    with _lock:
        if _tools is None:
            import tools

            found: dict[str, type[Tool]] = {}
            for mod in sorted(pkgutil.iter_modules(tools.__path__), key=lambda m: m.name):
                if mod.name in _SKIP or mod.name.startswith("_"):
                    continue
                module = importlib.import_module(f"tools.{mod.name}")
                for value in vars(module).values():
                    if (
                        isinstance(value, type)
                        and issubclass(value, Tool)
                        and value.__module__ == module.__name__
                        and "name" in value.__dict__
                    ):
                        if value.name in found and found[value.name] is not value:
                            raise TypeError(f"two tools are named '{value.name}'")
                        found[value.name] = value
            _tools = dict(sorted(found.items()))
        return dict(_tools)


def get_tool(name: str) -> type[Tool]:
    tools = load_builtin_tools()
    try:
        return tools[name]
    except KeyError:
        raise UsageError(f"unknown tool '{name}'; available: {', '.join(tools) or 'none'}") from None
