"""visagent: a multimodal agent that answers questions about images and videos with evidence.

``from visagent import Agent``; ``Agent.load(profile="tiny").ask("...", media=["sample:coins"])``.
Attributes are imported lazily so that ``import visagent`` (and ``visagent --help``) stays light.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Action", "Agent", "Answer", "Config", "Evidence", "Final", "ModelPool", "Trace", "load_config"]

_LAZY = {
    "Agent": "visagent.agent",
    "Answer": "visagent.types",
    "Action": "visagent.types",
    "Final": "visagent.types",
    "Evidence": "visagent.types",
    "Trace": "visagent.types",
    "Config": "visagent.config",
    "load_config": "visagent.config",
    "ModelPool": "visagent.pool",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'visagent' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
