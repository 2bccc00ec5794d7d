"""visagent: a multimodal agent that answers questions about images and videos with evidence.

``from agent import Agent``; ``Agent.load(profile="tiny").ask("...", media=["sample:coins"])``.
Attributes are imported lazily so that ``import agent`` (and ``visagent --help``) stays light.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Action", "Agent", "Answer", "Config", "Evidence", "Final", "ModelPool", "Trace", "load_config"]

_LAZY = {
    "Agent": "agent.agent",
    "Answer": "agent.types",
    "Action": "agent.types",
    "Final": "agent.types",
    "Evidence": "agent.types",
    "Trace": "agent.types",
    "Config": "agent.config",
    "load_config": "agent.config",
    "ModelPool": "agent.pool",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'agent' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
