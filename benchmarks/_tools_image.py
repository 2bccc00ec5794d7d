"""``caption`` / ``vqa`` / ``detect`` / ``count`` latency on tiny checkpoints.

One row per (tool, backend, checkpoint), measured in this one run on ``sample:coffee`` (600x400)
through the tool's ``run`` with a CallContext (no planner):

- ``first_ms``: the first call, including the model load (tiny checkpoints are built beforehand);
- ``median_ms`` / ``min_ms``: later calls with the model resident.

Detect rows also report ``split_batched_ms`` (24 labels split over several captions by a lowered
``max_text_len``, run as one batch) against ``split_sequential_ms`` (the same captions, one
forward each) and their ratio ``split_ratio`` = sequential / batched.

    python -m benchmarks._tools_image [--device cpu|cuda] [--repeats 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from importlib.util import find_spec
from pathlib import Path
from typing import Any

IMAGE = "sample:coffee"
LOW = {"box_threshold": 0.0, "text_threshold": 0.0}
SPLIT_LABELS = [f"{c} {o}" for c in ("red", "blue", "white", "black") for o in ("cup", "mug", "table", "coin", "cat", "dog")]
SPLIT_TEXT_LEN = 24

#: (tool, family, checkpoint, backend, args)
CASES: list[tuple[str, str, str, str, dict[str, Any]]] = [
    ("caption", "caption", "tiny:blip", "transformers", {}),
    ("caption", "caption", "tiny:blip2", "transformers", {}),
    ("caption", "caption", "tiny:instructblip", "transformers", {}),
    ("caption", "caption", "tiny:git", "transformers", {}),
    ("vqa", "vqa", "tiny:blip-vqa", "transformers", {"question": "what color is the cup?"}),
    ("detect", "detect", "tiny:grounding-dino", "transformers", {"labels": ["cup", "saucer", "table"], **LOW}),
    ("detect", "detect", "tiny:grounding-dino", "official", {"labels": ["cup", "saucer", "table"], **LOW}),
    ("detect", "detect", "tiny:owlv2", "transformers", {"labels": ["cup", "saucer", "table"], **LOW}),
    ("count", "detect", "tiny:grounding-dino", "transformers", {"label": "cup", **LOW}),
    ("count", "detect", "tiny:grounding-dino", "official", {"label": "cup", **LOW}),
]


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


class _Bench:
    def __init__(self, tool: str, family: str, checkpoint: str, backend: str, device: str, cache_dir: str, options: dict[str, Any] | None = None) -> None:
        from visagent.config import load_config
        from visagent.pool import ModelPool
        from visagent.registry import get_tool

        self.config = load_config(
            profile="tiny",
            overrides={
                "device": device,
                "models": {family: {"checkpoint": checkpoint, "backend": backend, "options": options or {}}},
            },
            environ={"VISAGENT_CACHE_DIR": cache_dir},
        )
        self.pool = ModelPool()
        self.tool = get_tool(tool)()
        self.device = device

    def call(self, **args: Any) -> float:
        from visagent.session import Session

        ctx = Session(self.config, self.pool, [IMAGE]).open_call()
        inp = self.tool.Input.model_validate({"image": "img_0", **args})
        _sync(self.device)
        t0 = time.perf_counter()
        self.tool.run(inp, ctx)
        _sync(self.device)
        return (time.perf_counter() - t0) * 1000


def _split(checkpoint: str, backend: str, device: str, repeats: int, cache_dir: str) -> dict[str, Any]:
    """Split labels: one batched forward vs one forward per caption (same captions)."""
    b = _Bench("detect", "detect", checkpoint, backend, device, cache_dir, {"max_text_len": SPLIT_TEXT_LEN})
    b.call(labels=SPLIT_LABELS, **LOW)
    from visagent.context import Models
    from visagent.tools.detect import plan_chunks

    with Models(b.config, b.pool).use("detect") as bundle:
        chunks = plan_chunks(bundle.tokenizer, SPLIT_LABELS, bundle.max_text_len)
    batched = [b.call(labels=SPLIT_LABELS, **LOW) for _ in range(repeats)]
    sequential = [sum(b.call(labels=c.labels, **LOW) for c in chunks) for _ in range(repeats)]
    bt, sq = statistics.median(batched), statistics.median(sequential)
    return {"captions": len(chunks), "split_batched_ms": round(bt, 2), "split_sequential_ms": round(sq, 2), "split_ratio": round(sq / bt, 2)}


def run(device: str = "cpu", repeats: int = 5) -> list[dict[str, Any]]:
    """Rows of measurements, one per (tool, backend, checkpoint); see the module docstring."""
    cache_dir = os.environ.get("VISAGENT_CACHE_DIR") or tempfile.mkdtemp(prefix="visagent-bench-")
    from visagent.checkpoints import ensure_tiny

    rows = []
    for tool, family, checkpoint, backend, args in CASES:
        if backend == "official" and find_spec("groundingdino") is None:
            rows.append({"tool": tool, "backend": backend, "checkpoint": checkpoint, "device": device,
                         "skipped": "groundingdino-py is not installed"})  # fmt: skip
            continue
        ensure_tiny(checkpoint.split(":", 1)[1], backend, Path(cache_dir))
        b = _Bench(tool, family, checkpoint, backend, device, cache_dir)
        first = b.call(**args)
        times = [b.call(**args) for _ in range(repeats)]
        row: dict[str, Any] = {
            "tool": tool,
            "backend": backend,
            "checkpoint": checkpoint,
            "device": device,
            "image": f"{IMAGE} 600x400",
            "first_ms": round(first, 2),
            "median_ms": round(statistics.median(times), 2),
            "min_ms": round(min(times), 2),
        }
        if tool == "detect" and checkpoint == "tiny:grounding-dino":
            row.update(_split(checkpoint, backend, device, repeats, cache_dir))
        rows.append(row)
    return rows


COLUMNS = ("tool", "backend", "checkpoint", "device", "first_ms", "median_ms", "min_ms", "split_ratio")


def format_table(rows: list[dict[str, Any]]) -> str:
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in COLUMNS}
    lines = ["  ".join(c.ljust(widths[c]) for c in COLUMNS)]
    lines += ["  ".join(str(r.get(c, "")).ljust(widths[c]) for c in COLUMNS) for r in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path, default=None, help="write the rows as JSON here")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    rows = run(args.device, args.repeats)
    print(format_table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
