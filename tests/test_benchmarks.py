"""The benchmarks run: each module as a user starts it (``python -m benchmarks.X``), with the
smallest settings, writing JSON whose structure is checked. Numbers are not asserted here (a
shared CPU says nothing about speed); only that every measurement is present, positive and finite.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import ROOT


def run_benchmark(tmp_path: Path, module: str, *args: str, timeout: float = 300) -> Any:
    out = tmp_path / f"{module}.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", f"benchmarks.{module}", *args, "--json", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip(), "the benchmark printed no table"
    return json.loads(out.read_text())


def positive(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_loop_overhead(tmp_path: Path) -> None:
    result = run_benchmark(tmp_path, "loop_overhead", "--repeats", "2")
    rows = result["rows"]
    assert {(r["steps"], r["mode"]) for r in rows} == {
        (n, mode) for n in (10, 50) for mode in ("inline tools", "tools with timeout (thread)")
    }
    for row in rows:
        assert positive(row["agent_ms_per_step"]) and positive(row["bare_ms_per_step"])
        assert row["ratio"] == pytest.approx(row["agent_ms_per_step"] / row["bare_ms_per_step"])
    assert math.isfinite(result["thread_handoff_ms_per_step"])


def test_planner(tmp_path: Path) -> None:
    result = run_benchmark(tmp_path, "planner", "--steps", "1")
    tiny = result["tiny"]
    for mode in ("constrained", "unconstrained"):
        for key in ("prompt_ms", "generate_ms", "new_tokens"):
            assert positive(tiny[mode][key]), (mode, key, tiny[mode])
    assert positive(tiny["constrained"]["parse_ms"])  # random unconstrained text is not parsed
    assert positive(tiny["constrained_overhead_ratio"])


def test_image_tools(tmp_path: Path) -> None:
    rows = run_benchmark(tmp_path, "_tools_image", "--repeats", "1")
    tools = {row["tool"] for row in rows}
    assert {"caption", "vqa", "detect", "count"} <= tools, tools
    assert all(positive(row["median_ms"]) and positive(row["first_ms"]) for row in rows), rows
    split = [row for row in rows if "split_ratio" in row]
    assert split and all(positive(row["split_ratio"]) for row in split)


def test_segment_tool(tmp_path: Path) -> None:
    rows = run_benchmark(tmp_path, "_tools_segment", "--repeats", "1")
    assert {row["backend"] for row in rows} == {"transformers", "official"}
    for row in rows:
        assert positive(row["cache_ratio"]) and positive(row["batch_ratio"]), row


def test_media_tools(tmp_path: Path) -> None:
    rows = run_benchmark(tmp_path, "_tools_media", "--repeats", "1", "--images", "4")
    by_bench = {row["bench"]: row for row in rows}
    assert set(by_bench) == {"gallery", "frames"}, rows
    gallery = by_bench["gallery"]
    assert gallery["images"] == 4 and positive(gallery["batched_ips"]) and positive(gallery["one_by_one_ips"])
    assert all(positive(row["sample_ms"]) and positive(row["ratio"]) for row in rows if row["bench"] == "frames")


def test_server(tmp_path: Path) -> None:
    result = run_benchmark(tmp_path, "server", "--requests", "4", "--levels", "1", "2")
    levels = result["levels"]
    assert [level["concurrency"] for level in levels] == [1, 2]
    for level in levels:
        assert level["requests"] == 4 and level["failures"] == 0, level
        assert positive(level["rps"]) and level["p95_ms"] >= level["p50_ms"] > 0
    assert math.isfinite(result["overhead_ms"])


def test_client(tmp_path: Path) -> None:
    result = run_benchmark(tmp_path, "client", "--repeats", "1")
    assert result["repeats"] == 1 and positive(result["server_first_ask_ms"]) and positive(result["speedup"])
    for mode in ("local_ms", "server_ms"):
        assert len(result[mode]["runs"]) == 1 and all(positive(x) for x in result[mode]["runs"])


def test_video_tools(tmp_path: Path) -> None:
    rows = run_benchmark(tmp_path, "video", "--minutes", "0.05", "--size", "160x90", "--fps", "2")
    assert [row["tool"] for row in rows] == ["segment_video", "track"]
    for row in rows:
        assert row["frames"] == 6 and row["size"] == "160x90", row
        assert positive(row["fps"]) and positive(row["peak_rss_mb"]) and row["peak_rss_mb"] >= row["warm_rss_mb"] > 0
    assert 0 < rows[0]["peak_state_frames"] <= 6 and rows[0]["objects_with_masks"] == 2


def test_serving(tmp_path: Path) -> None:
    result = run_benchmark(tmp_path, "serving", "--modes", "batched", "--levels", "2", "--requests", "2", "--rounds", "1", "--calls", "1", "--torch-threads", "1")
    (mode,) = result["results"]
    assert mode["mode"] == "batched" and positive(mode["peak_rss_mb"])
    (level,) = mode["levels"]
    assert level["clients"] == 2 and level["requests"] == 2 and level["failures"] == 0, level
    assert positive(level["rps"]) and level["p95_ms"] >= level["p50_ms"] > 0
    # one detector call per request: the batches of the level hold exactly the two calls
    assert sum(int(n) * c for n, c in level["batch_sizes"].items()) == 2 and 1 <= level["max_batch"] <= 2
