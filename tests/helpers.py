"""Helpers shared by the tool tests: the CLI with a scripted plan, and trace filters."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from agent.types import ErrorStep, ToolStep

ROOT = Path(__file__).parents[1]


def ask_cli(
    tmp_path: Path,
    media: list[str],
    question: str,
    plan: list[dict[str, Any]],
    *,
    config: dict[str, Any] | None = None,
    extra: tuple[str, ...] = ("--json",),
    timeout: float = 300,
) -> subprocess.CompletedProcess[str]:
    """``visagent ask MEDIA... QUESTION --profile tiny --planner script:PLAN [--config CFG] EXTRA`` in a subprocess."""
    plan_file = tmp_path / f"plan-{len(list(tmp_path.glob('plan-*.yaml')))}.yaml"
    plan_file.write_text(yaml.safe_dump(plan))
    cmd = [sys.executable, "-m", "agent.cli", "ask", *media, question, "--profile", "tiny", "--planner", f"script:{plan_file}"]
    if config is not None:
        cfg = plan_file.with_suffix(".config.yaml")
        cfg.write_text(yaml.safe_dump(config))
        cmd += ["--config", str(cfg)]
    cmd += list(extra)
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, env=dict(os.environ, HF_HUB_OFFLINE="1"), cwd=ROOT
    )


def tool_steps(answer: Any) -> list[ToolStep]:
    return [s for s in answer.trace.steps if isinstance(s, ToolStep)]


def error_steps(answer: Any) -> list[ErrorStep]:
    return [s for s in answer.trace.steps if isinstance(s, ErrorStep)]
