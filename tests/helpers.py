"""Helpers shared by the tests: the CLI with a scripted plan, trace filters, generated videos."""

from __future__ import annotations

import os
import subprocess
import sys
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from visagent.types import ErrorStep, ToolStep

ROOT = Path(__file__).parents[1]
VIDEO_W, VIDEO_H = 64, 48


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
    cmd = [sys.executable, "-m", "visagent.cli", "ask", *media, question, "--profile", "tiny", "--planner", f"script:{plan_file}"]
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


def write_video(path: Path, times: list[float], rotation: int = 0, size: tuple[int, int] = (VIDEO_W, VIDEO_H)) -> Path:
    """H.264 video whose frame i is shown at ``times[i]`` s. Frame i is painted so its index can be
    read back (``frame_index``): red = (i % 25) * 10, green = (i // 25) * 10; a white strip marks
    the left quarter (to check rotation)."""
    import av

    w, h = size
    with av.open(str(path), "w") as container:
        gaps = [b - a for a, b in zip(times, times[1:])] or [0.1]
        stream = container.add_stream("libx264", rate=max(1, round(1 / min(gaps))))
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.codec_context.time_base = Fraction(1, 1000)
        if rotation:
            stream.set_display_rotation(rotation)
        for i, t in enumerate(times):
            a = np.zeros((h, w, 3), np.uint8)
            a[..., 0], a[..., 1] = (i % 25) * 10, (i // 25) * 10
            a[:, : w // 4] = 255
            frame = av.VideoFrame.from_ndarray(a, format="rgb24")
            frame.pts, frame.time_base = int(round(t * 1000)), Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def frame_index(image: Any) -> int:
    a = np.asarray(image).astype(float)
    h, w = a.shape[:2]
    core = a[h // 4 : 3 * h // 4, w // 2 : 3 * w // 4]  # away from the white strip
    return int(round(core[..., 0].mean() / 10)) + 25 * int(round(core[..., 1].mean() / 10))
