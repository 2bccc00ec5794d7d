"""Video tools benchmark: throughput and peak memory of ``segment_video`` and ``track`` against
the length of the video.

Videos: generated H.264 (``--size``, default 1280x720; ``--rate`` frames per second, default 2;
solid shapes moving over a grey background, so encoding stays cheap) of each length in
``--minutes`` (default 1, 5, 10). Each (tool, length) runs in a fresh Python process so that peak
memories do not mix: it loads the tool's model and warms it up on the first 2 s, then processes
the whole video at ``--fps`` (default 1) through a ``Session`` call context, as the agent's tool
runner does.

Reported per row: ``frames`` processed, ``seconds`` (wall), ``fps`` = frames / seconds,
``peak_rss_mb`` (the process's peak resident memory, ``getrusage``), ``warm_rss_mb`` (the peak
after the warm-up, before the measured call) and ``growth_mb`` = peak - warm: the memory the call
itself added; ``output_mb``: the size of the call's output as JSON (per-frame masks / boxes: it
grows with the frames processed, by design). Flat memory in video length shows as ``growth_mb``
that grows no faster than the output; ``peak_state_frames`` (segment_video) is the most frames the SAM 2 session held.
Checkpoints: the tiny profile (``tiny:sam2-video``, ``tiny:grounding-dino``); with ``--full``
(default on CUDA) segment_video also runs a real-size SAM 2 (``Sam2VideoConfig()``, the
hiera-tiny architecture at 1024 px, random weights) saved and loaded through the same loader.
``--threads`` sets torch's CPU threads in each process (default 1 on CPU: on a small machine
shared with other work, more threads oversubscribe the cores and tiny models slow down by 10x
and more; 0 keeps torch's default). Figures depend on the machine's load; compare rows of one run.

    python -m benchmarks.video [--minutes 1 5 10] [--fps 1] [--tools segment_video track]
                               [--size 1280x720] [--rate 2] [--device cpu|cuda] [--threads 1] [--full]
                               [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

TOOLS = ("segment_video", "track")
WARMUP_S = 2.0


def make_video(path: Path, minutes: float, size: tuple[int, int] = (1280, 720), rate: int = 2) -> Path:
    """``minutes`` of H.264 at ``rate`` fps: a red square and a blue bar moving over grey.
    Shapes' positions at time t are those of ``shape_boxes(t, size)``."""
    import av
    import numpy as np

    w, h = size
    frames = max(1, round(minutes * 60 * rate))
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=rate, options={"preset": "ultrafast", "g": str(10 * rate)})
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.codec_context.time_base = Fraction(1, rate)
        base = np.full((h, w, 3), 128, np.uint8)
        for i in range(frames):
            a = base.copy()
            for (x0, y0, x1, y1), colour in zip(shape_boxes(i / rate, size), ((220, 30, 30), (30, 30, 220)), strict=True):
                a[int(y0) : int(y1), int(x0) : int(x1)] = colour
            frame = av.VideoFrame.from_ndarray(a, format="rgb24")
            frame.pts = i
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def shape_boxes(t: float, size: tuple[int, int]) -> list[list[float]]:
    """[x0, y0, x1, y1] of the two shapes at ``t`` seconds (they bounce across the frame)."""
    w, h = size
    side, bar_w, bar_h = h // 4, w // 6, h // 10

    def bounce(pos: float, span: float) -> float:
        span = max(span, 1.0)
        pos %= 2 * span
        return pos if pos < span else 2 * span - pos

    x = bounce(40 * t, w - side)
    y = bounce(25 * t, h - side)
    bx = bounce(60 * t + w / 2, w - bar_w)
    by = h - 2 * bar_h
    return [[x, y, x + side, y + side], [bx, by, bx + bar_w, by + bar_h]]


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes


def _full_sam2(folder: Path) -> str:
    """Real-size SAM 2 video predictor (``Sam2VideoConfig()``, random weights) in ``folder``."""
    import torch
    from transformers import Sam2VideoConfig, Sam2VideoModel

    from visagent.tools.tiny.segment_video import save_sam2_video_processor

    target = folder / "sam2-video-hiera-random"
    if not (target / "config.json").is_file():
        torch.manual_seed(0)
        Sam2VideoModel(Sam2VideoConfig()).save_pretrained(target)
        save_sam2_video_processor(target, 1024)
    return str(target)


def child(tool: str, video: str, fps: float, device: str, checkpoint: str | None) -> dict[str, Any]:
    """One measurement in this (fresh) process."""
    from visagent.config import load_config
    from visagent.media import MediaStore
    from visagent.pool import ModelPool
    from visagent.session import Session
    from visagent.tools.video import probe

    models: dict[str, Any] = {"video_segment": {"checkpoint": checkpoint}} if checkpoint else {}
    config = load_config(
        profile="tiny", overrides={"device": device, "models": models},
        environ={k: v for k, v in os.environ.items() if k == "VISAGENT_CACHE_DIR"},
    )  # fmt: skip
    media = MediaStore()
    vid = media.add(video)
    session = Session(config, ModelPool(), media)
    meta = probe(video)
    if tool == "segment_video":
        from visagent.tools.segment_video import SegmentVideo, SegmentVideoInput

        boxes = shape_boxes(0.0, (meta.width, meta.height))

        def call(end: float | None) -> Any:
            inp = SegmentVideoInput(video=vid, boxes=boxes, fps=fps, end=end, max_frames=20_000)
            return SegmentVideo().run(inp, session.open_call())

        def count(out: Any) -> int:
            return len(out.times)
    else:
        from visagent.tools.track import Track, TrackInput

        def call(end: float | None) -> Any:
            inp = TrackInput(video=vid, labels=["square"], fps=fps, end=end, max_frames=1800)
            return Track().run(inp, session.open_call())

        def count(out: Any) -> int:
            return int(out.frames)

    call(min(WARMUP_S, meta.duration))
    warm = _peak_mb()
    t0 = time.perf_counter()
    out = call(None)
    seconds = time.perf_counter() - t0
    frames = count(out)
    row = {
        "tool": tool, "device": device, "checkpoint": Path(checkpoint).name if checkpoint else "tiny",
        "minutes": round(meta.duration / 60, 2), "size": f"{meta.width}x{meta.height}", "sample_fps": fps,
        "frames": frames, "seconds": round(seconds, 2), "fps": round(frames / seconds, 2),
        "peak_rss_mb": round(_peak_mb(), 1), "warm_rss_mb": round(warm, 1), "growth_mb": round(_peak_mb() - warm, 1),
        "output_mb": round(len(out.model_dump_json()) / 2**20, 2),
    }  # fmt: skip
    if tool == "segment_video":
        row["peak_state_frames"] = out.peak_state_frames
        row["objects_with_masks"] = sum(1 for o in out.objects if o.frames)
    return row


def _spawn(tool: str, video: Path, fps: float, device: str, checkpoint: str | None, folder: Path, threads: int) -> dict[str, Any]:
    out = folder / f"row-{tool}-{video.stem}-{os.getpid()}.json"
    cmd = [sys.executable, "-m", "benchmarks.video", "--child", tool, "--video", str(video), "--fps", str(fps),
           "--device", device, "--threads", str(threads), "--json", str(out)]  # fmt: skip
    if checkpoint:
        cmd += ["--checkpoint", checkpoint]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if proc.returncode != 0:
        raise RuntimeError(f"{tool} on {video.name} failed: {proc.stderr[-2000:]}")
    return json.loads(out.read_text())


def run(
    minutes: list[float], fps: float, tools: list[str], size: tuple[int, int], rate: int, device: str, full: bool, threads: int = 1
) -> list[dict[str, Any]]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="visagent-bench-video-") as tmp:
        folder = Path(tmp)
        checkpoints: list[str | None] = [None]
        if full:
            checkpoints.append(_full_sam2(folder))
        for m in minutes:
            t0 = time.perf_counter()
            video = make_video(folder / f"video-{m:g}min.mp4", m, size, rate)
            log.info("generated %s in %.1f s", video.name, time.perf_counter() - t0)
            for tool in tools:
                for checkpoint in checkpoints if tool == "segment_video" else [None]:
                    rows.append(_spawn(tool, video, fps, device, checkpoint, folder, threads))
                    log.info("%s", rows[-1])
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    cols = ["tool", "checkpoint", "threads", "minutes", "size", "frames", "seconds", "fps", "peak_rss_mb", "warm_rss_mb", "growth_mb", "output_mb", "peak_state_frames"]
    lines = [" | ".join(cols), " | ".join("---" for _ in cols)]
    for r in rows:
        lines.append(" | ".join(str(r.get(c, "")) for c in cols))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, nargs="+", default=[1, 5, 10])
    p.add_argument("--fps", type=float, default=1.0, help="frames per second processed")
    p.add_argument("--tools", nargs="+", choices=TOOLS, default=list(TOOLS))
    p.add_argument("--size", default="1280x720", help="WIDTHxHEIGHT of the generated videos")
    p.add_argument("--rate", type=int, default=2, help="frames per second of the generated videos")
    p.add_argument("--device", default=None)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads per process (default 1 on CPU; 0: torch's default)")
    p.add_argument("--full", action="store_true", default=None, help="also a real-size SAM 2 (default on CUDA)")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--child", choices=TOOLS, help=argparse.SUPPRESS)
    p.add_argument("--video", help=argparse.SUPPRESS)
    p.add_argument("--checkpoint", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for name in ("transformers", "httpx", "urllib3"):
        logging.getLogger(name).setLevel(logging.WARNING)
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    threads = args.threads if args.threads is not None else (1 if device == "cpu" else 0)
    if threads > 0:
        torch.set_num_threads(threads)
    if args.child:
        row = child(args.child, args.video, args.fps, device, args.checkpoint)
        row["threads"] = torch.get_num_threads()
        args.json.write_text(json.dumps(row))
        return 0
    w, h = (int(v) for v in args.size.lower().split("x"))
    full = device.startswith("cuda") if args.full is None else args.full
    rows = run(args.minutes, args.fps, args.tools, (w, h), args.rate, device, full, threads)
    print(table(rows))  # noqa: T201 - the benchmark's report
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
