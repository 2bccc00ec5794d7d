"""``segment`` benchmark: latency, embedding cache and prompt batching, for both SAM backends.

Per backend (``transformers`` SamModel, ``official`` segment-anything SamPredictor), on
``sample:coffee`` (600x400), all measured in this one run with the model already loaded:

- ``uncached_ms``: a ``segment`` call on a fresh image (image encoder + decode), median;
- ``cached_ms``: the same call again on that image (embedding from the media cache), median;
  ``cache_ratio`` = uncached / cached;
- ``batched_ms``: one call with N=16 boxes (one mask-decoder batch), cached embedding;
  ``one_by_one_ms``: 16 calls with one box each, cached embedding; ``batch_ratio`` =
  one_by_one / batched (target >= 3).

Checkpoints: ``tiny:sam`` (both backends) and ``tiny:sam2`` (transformers) always; with ``full=True`` (default on CUDA) also the real ViT-B
architecture with random weights (transformers ``SamConfig()`` and the official ``vit_b``), saved
and loaded through the same loaders as a downloaded checkpoint.

    python -m benchmarks._tools_segment [--device cpu|cuda] [--full] [--repeats 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from visagent.config import load_config
from visagent.pool import ModelPool
from visagent.session import Session
from visagent.tools.segment import Segment, SegmentInput

log = logging.getLogger(__name__)

BACKENDS = ("transformers", "official")
#: tiny checkpoints measured: (backend, checkpoint)
TINY = (("transformers", "tiny:sam"), ("official", "tiny:sam"), ("transformers", "tiny:sam2"))
N_BOXES = 16
IMAGE = "sample:coffee"
BOX = [150.0, 40.0, 450.0, 380.0]


def _boxes(n: int, width: int = 600, height: int = 400) -> list[list[float]]:
    out = []
    for i in range(n):
        x = (i % 4) * (width / 4)
        y = (i // 4 % 4) * (height / 4)
        out.append([x + 5, y + 5, x + width / 4 - 5, y + height / 4 - 5])
    return out


def _full_checkpoints(folder: Path) -> dict[str, str]:
    """Random-weight SAM ViT-B in both formats: a transformers folder and an official .pth."""
    import torch
    from segment_anything import sam_model_registry
    from transformers import SamConfig, SamImageProcessor, SamModel, SamProcessor

    torch.manual_seed(0)
    hf = folder / "sam-vit-base-random"
    SamModel(SamConfig()).save_pretrained(hf)
    SamProcessor(SamImageProcessor()).save_pretrained(hf)
    pth = folder / "sam_vit_b_random.pth"
    torch.save(sam_model_registry["vit_b"](checkpoint=None).state_dict(), pth)
    return {"transformers": str(hf), "official": str(pth)}


class _Bench:
    def __init__(self, backend: str, checkpoint: str, device: str, cache_dir: str) -> None:
        self.config = load_config(
            profile="tiny",
            overrides={"device": device, "models": {"segment": {"checkpoint": checkpoint, "backend": backend}}},
            environ={"VISAGENT_CACHE_DIR": cache_dir},
        )
        self.pool = ModelPool()
        self.tool = Segment()

    def ctx(self) -> Session:
        return Session(self.config, self.pool, [IMAGE])

    def call(self, session: Session, **args: Any) -> float:
        ctx = session.open_call()
        t0 = time.perf_counter()
        self.tool.run(SegmentInput(image="img_0", **args), ctx)  # masks are copied to the CPU: synchronous
        session.last_cache = ctx.cache  # type: ignore[attr-defined]
        return (time.perf_counter() - t0) * 1000


def bench_backend(backend: str, checkpoint: str, device: str, repeats: int, cache_dir: str) -> dict[str, Any]:
    b = _Bench(backend, checkpoint, device, cache_dir)
    warm = b.ctx()
    for _ in range(2):  # load the model, warm up kernels
        b.call(b.ctx(), boxes=[BOX])
        b.call(warm, boxes=_boxes(N_BOXES))
    uncached, cached = [], []
    for _ in range(repeats):
        ctx = b.ctx()
        uncached.append(b.call(ctx, boxes=[BOX]))
        assert ctx.last_cache["sam_image_embedding"] == "miss"
        cached.append(b.call(ctx, boxes=[BOX]))
        assert ctx.last_cache["sam_image_embedding"] == "hit"
    boxes = _boxes(N_BOXES)
    batched, single = [], []
    for _ in range(repeats):
        batched.append(b.call(warm, boxes=boxes))
        single.append(sum(b.call(warm, boxes=[box]) for box in boxes))
    u, c = statistics.median(uncached), statistics.median(cached)
    bt, sg = statistics.median(batched), statistics.median(single)
    return {
        "tool": "segment",
        "backend": backend,
        "device": device,
        "checkpoint": checkpoint if checkpoint.startswith("tiny:") else Path(checkpoint).name,
        "image": f"{IMAGE} 600x400",
        "uncached_ms": round(u, 2),
        "cached_ms": round(c, 2),
        "cache_ratio": round(u / c, 2),
        "boxes": N_BOXES,
        "batched_ms": round(bt, 2),
        "one_by_one_ms": round(sg, 2),
        "batch_ratio": round(sg / bt, 2),
    }


def run(device: str = "cpu", repeats: int = 5, full: bool | None = None) -> list[dict[str, Any]]:
    """Rows of measurements (one per backend and checkpoint); see the module docstring."""
    cache_dir = os.environ.get("VISAGENT_CACHE_DIR") or tempfile.mkdtemp(prefix="visagent-bench-")
    full = device.startswith("cuda") if full is None else full
    rows = [bench_backend(backend, checkpoint, device, repeats, cache_dir) for backend, checkpoint in TINY]
    if full:
        with tempfile.TemporaryDirectory(prefix="visagent-sam-full-") as tmp:
            checkpoints = _full_checkpoints(Path(tmp))
            for backend in BACKENDS:
                rows.append(bench_backend(backend, checkpoints[backend], device, repeats, cache_dir))
    return rows


COLUMNS = ("backend", "device", "checkpoint", "uncached_ms", "cached_ms", "cache_ratio", "batched_ms", "one_by_one_ms", "batch_ratio")


def format_table(rows: list[dict[str, Any]]) -> str:
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in COLUMNS}
    lines = ["  ".join(c.ljust(widths[c]) for c in COLUMNS)]
    lines += ["  ".join(str(r[c]).ljust(widths[c]) for c in COLUMNS) for r in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--full", action="store_true", default=None, help="also the ViT-B architecture (random weights)")
    parser.add_argument("--json", type=Path, default=None, help="write the rows as JSON here")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    rows = run(args.device, args.repeats, args.full)
    print(format_table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
