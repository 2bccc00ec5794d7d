"""pytest collects every scenario in ``scenarios/*.yaml`` as a test: ``pytest scenarios/``.

Scenarios that name no profile run with ``VISAGENT_SCENARIO_PROFILE`` (default ``tiny``); those
that need real checkpoints not present here are skipped with the reason. All scenarios share one
model pool. An invalid scenario file is a collection error naming the file, scenario and field.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

_RUNNER: Any = None


def _runner() -> Any:
    global _RUNNER
    if _RUNNER is None:
        from visagent.scenarios import ScenarioRunner

        from visagent.client import find_server

        # a running visagent server (VISAGENT_SERVER, or one on 127.0.0.1:8000) answers the
        # scenarios whose profile it runs; VISAGENT_LOCAL=1 runs all of them here
        _RUNNER = ScenarioRunner(profile=os.environ.get("VISAGENT_SCENARIO_PROFILE", "tiny"), server=find_server())
    return _RUNNER


def pytest_collect_file(parent: pytest.Collector, file_path: Any) -> pytest.Collector | None:
    if file_path.suffix in (".yaml", ".yml"):
        return ScenarioFile.from_parent(parent, path=file_path)
    return None


class ScenarioFailed(Exception):
    pass


class ScenarioFile(pytest.File):
    def collect(self) -> Any:
        from visagent.scenarios import load_file

        for scenario in load_file(self.path):
            yield ScenarioItem.from_parent(self, name=scenario.name, scenario=scenario)


class ScenarioItem(pytest.Item):
    def __init__(self, *, scenario: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.scenario = scenario
        if scenario.requires or scenario.profile == "default":
            self.add_marker(pytest.mark.real)

    def runtest(self) -> None:
        from visagent.scenarios import failure_text

        runner = _runner()
        reason = runner.skip_reason(self.scenario)
        if reason:
            pytest.skip(reason)
        result = runner.run(self.scenario)
        if not result["passed"]:
            raise ScenarioFailed(failure_text(result))

    def repr_failure(self, excinfo: Any, style: Any = None) -> str:
        if isinstance(excinfo.value, ScenarioFailed):
            return str(excinfo.value)
        return super().repr_failure(excinfo, style=style)

    def reportinfo(self) -> tuple[Any, int, str]:
        return self.path, 0, f"scenario {self.name}"
