"""Shared fixtures. Tests run offline on the CPU with tiny random checkpoints.

Tiny checkpoints are built once per test session into a temporary cache directory
(``VISAGENT_CACHE_DIR``), which subprocesses (CLI tests) inherit.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
if "VISAGENT_TEST_CACHE" not in os.environ:
    os.environ["VISAGENT_TEST_CACHE"] = tempfile.mkdtemp(prefix="visagent-test-cache-")
os.environ["VISAGENT_CACHE_DIR"] = os.environ["VISAGENT_TEST_CACHE"]
# the CLI runs in-process unless a test names a server (a developer's own `visagent serve` is left alone)
os.environ["VISAGENT_LOCAL"] = "1"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except Exception:  # noqa: BLE001
        has_cuda = False
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU (none on this machine)")
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def tiny_config() -> Any:
    from visagent.config import load_config

    return load_config(profile="tiny", environ={"VISAGENT_CACHE_DIR": os.environ["VISAGENT_CACHE_DIR"]})


@pytest.fixture(scope="session")
def shared_pool() -> Any:
    from visagent.pool import ModelPool

    return ModelPool()


@pytest.fixture
def make_agent(tiny_config: Any, shared_pool: Any) -> Callable[..., Any]:
    """``make_agent(plan, tools=None)``: an Agent on the tiny profile with a scripted plan."""
    from visagent.agent import Agent
    from visagent.planners import ScriptedPlanner

    def make(plan: Sequence[Any] | Any, tools: Sequence[Any] | None = None, **kwargs: Any) -> Any:
        planner = plan if hasattr(plan, "next") else ScriptedPlanner(list(plan))
        return Agent(tiny_config, planner=planner, tools=tools, pool=shared_pool, **kwargs)

    return make
