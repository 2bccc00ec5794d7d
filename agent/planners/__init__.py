"""Planners: choose the next tool call or the final answer.

``make_planner(spec, config)`` builds one from a name: ``script:PATH`` or a registered kind
(``llava``, ``openai``, ...). ``parse_action(text, format)`` parses planner text.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from visagent.errors import UsageError
from visagent.planners.base import Planner, PlannerState
from visagent.planners.parsing import parse_action
from visagent.planners.scripted import FunctionPlanner, ScriptedPlanner, load_plan

__all__ = [
    "FunctionPlanner",
    "Planner",
    "PlannerState",
    "ScriptedPlanner",
    "load_plan",
    "make_planner",
    "parse_action",
    "register_planner",
]

_FACTORIES: dict[str, Callable[..., Planner]] = {}
# kinds whose module registers itself on import (imported lazily: they pull in torch)
_LAZY = {
    "llava": "visagent.planners.llava",
    "openai": "visagent.planners.openai",
    "langchain": "visagent.planners.langchain",
}


def register_planner(kind: str) -> Callable[[Callable[..., Planner]], Callable[..., Planner]]:
    def deco(factory: Callable[..., Planner]) -> Callable[..., Planner]:
        _FACTORIES[kind] = factory
        return factory

    return deco


def available_planners() -> list[str]:
    return sorted(set(_FACTORIES) | set(_LAZY) | {"script:PATH"})


def make_planner(spec: str | Planner | None, config: Any, **kwargs: Any) -> Planner:
    """A planner from ``spec`` (``llava``, ``openai``, ``script:PATH``, or a Planner instance)."""
    import importlib

    if spec is None:
        spec = config.planner.kind
    if not isinstance(spec, str):
        return spec
    if spec.startswith("script:"):
        return ScriptedPlanner(spec[len("script:") :])
    if spec not in _FACTORIES and spec in _LAZY:
        try:
            importlib.import_module(_LAZY[spec])
        except ModuleNotFoundError as exc:
            raise UsageError(f"planner '{spec}' is not available: {exc}") from None
    factory = _FACTORIES.get(spec)
    if factory is None:
        raise UsageError(f"unknown planner '{spec}'; available: {', '.join(available_planners())}")
    return factory(config, **kwargs)


import visagent.planners.llava_plus  # noqa: E402,F401  registers the "llava_plus" action format
