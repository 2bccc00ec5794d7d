"""Media tools benchmark: gallery embedding throughput and video frame sampling.

All figures are measured in this one run.

- ``gallery``: a folder of N JPEG photos (scikit-image samples, 480x320) embedded into a fresh
  gallery index by ``GalleryIndex.refresh`` (threaded decode one batch ahead, batches of
  ``batch_size``) vs the same pipeline one image at a time (batch 1, on the first 1,024 files at
  most): ``batched_ips`` and ``one_by_one_ips`` in images/s, ``batch_ratio`` = batched / one by one. ``reuse_ms``: the
  second refresh of the same folder (index hit: stat only, nothing embedded).
  Checkpoints: ``tiny:clip`` always; with ``full`` (default on CUDA) also the real CLIP ViT-B/32
  architecture (``CLIPConfig()``, random weights) saved and loaded through the same loader.
- ``frames``: a generated 1-minute H.264 video (30 fps, 480x270; keyframe every 2 s and the x264
  default of 250 frames): ``sample_ms`` = ``sample_frames(path, 8)`` (seek + decode forward) vs
  ``decode_all_ms`` = decoding every frame once and keeping the 8 shown at the same timestamps;
  ``ratio`` = decode_all / sample.

    python -m benchmarks._tools_media [--device cpu|cuda] [--full] [--images 64] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import tempfile
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

ONE_BY_ONE_MAX = 1024  # one-by-one throughput is measured on at most this many images
SAMPLES = ("astronaut", "chelsea", "coffee", "rocket", "horse", "coins", "camera", "page")


def make_gallery(folder: Path, n: int) -> Path:
    """``n`` distinct 480x320 JPEGs (sample photos, shifted and marked so every file differs)."""
    import numpy as np
    from PIL import Image

    from visagent.media import sample_image

    folder.mkdir(parents=True, exist_ok=True)
    bases = [np.asarray(sample_image(s).resize((480, 320))) for s in SAMPLES]
    for i in range(n):
        a = np.roll(bases[i % len(bases)], shift=i * 7, axis=1).copy()
        a[:8, :8], a[:8, 8:16] = i % 256, (i // 256) % 256  # every file distinct (the index dedupes content)
        Image.fromarray(a).save(folder / f"photo_{i:05d}.jpg", quality=90)
    return folder


def make_video(path: Path, seconds: int = 60, fps: int = 30, size: tuple[int, int] = (480, 270), gop: int = 60) -> Path:
    """A moving gradient, H.264, ``gop`` frames between keyframes."""
    import av
    import numpy as np

    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps, options={"g": str(gop), "keyint_min": str(gop)})
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.codec_context.time_base = Fraction(1, fps)
        for i in range(seconds * fps):
            a = np.stack([(xx + 3 * i) % 256, (yy + i) % 256, np.full_like(xx, (i * 2) % 256)], -1).astype(np.uint8)
            frame = av.VideoFrame.from_ndarray(a, format="rgb24")
            frame.pts = i
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def decode_every_frame(path: str, n: int) -> list[float]:
    """The baseline: decode the whole file, keep the frames shown at the uniform timestamps."""
    import av

    from visagent.tools.video import probe, uniform_timestamps

    meta = probe(path)
    targets = uniform_timestamps(meta.duration, n, meta.start)
    kept: list[float] = []
    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        prev = None
        k = 0
        for frame in container.decode(stream):
            while k < len(targets) and frame.time > targets[k] + 1e-6:
                if prev is not None:
                    prev.to_image()
                    kept.append(float(prev.time))
                k += 1
            prev = frame
        while k < len(targets) and prev is not None:
            prev.to_image()
            kept.append(float(prev.time))
            k += 1
    return kept


def bench_frames(folder: Path, repeats: int) -> list[dict[str, Any]]:
    from visagent.tools.video import sample_frames

    rows = []
    for gop in (60, 250):
        video = make_video(folder / f"minute-gop{gop}.mp4", gop=gop)
        sample_frames(str(video), 8)  # warm caches
        s_times, d_times = [], []
        for _ in range(repeats):
            t0 = time.perf_counter()
            _, frames = sample_frames(str(video), 8)
            s_times.append((time.perf_counter() - t0) * 1000)
            t0 = time.perf_counter()
            kept = decode_every_frame(str(video), 8)
            d_times.append((time.perf_counter() - t0) * 1000)
        assert [round(f.timestamp, 3) for f in frames] == [round(t, 3) for t in kept], "the two methods disagree"
        s, d = statistics.median(s_times), statistics.median(d_times)
        rows.append({
            "tool": "video_frames", "bench": "frames", "video": f"60 s 30 fps 480x270, keyframe every {gop} frames",
            "frames": 8, "sample_ms": round(s, 1), "decode_all_ms": round(d, 1), "ratio": round(d / s, 2),
        })  # fmt: skip
    return rows


def _full_clip(folder: Path) -> str:
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from visagent.tools.tiny.text import tiny_tokenizer

    torch.manual_seed(0)
    target = folder / "clip-vit-b32-random"
    CLIPModel(CLIPConfig()).save_pretrained(target)
    CLIPProcessor(image_processor=CLIPImageProcessor(), tokenizer=tiny_tokenizer("bpe", model_max_length=77)).save_pretrained(target)
    return str(target)


def bench_gallery(checkpoint: str, device: str, gallery: Path, index_root: Path, cache_dir: str) -> dict[str, Any]:
    from visagent.config import load_config
    from visagent.pool import ModelPool
    from visagent.session import Session
    from visagent.tools.search import GalleryIndex

    config = load_config(
        profile="tiny", overrides={"device": device, "models": {"search": {"checkpoint": checkpoint}}},
        environ={"VISAGENT_CACHE_DIR": cache_dir},
    )  # fmt: skip
    ctx = Session(config, ModelPool()).open_call()
    n = len(list(gallery.iterdir()))
    with ctx.model("search") as bundle:
        sync = _sync(device)
        GalleryIndex(gallery, "warm", index_root / "warm").refresh(bundle.embed_images, bundle.batch_size, workers=bundle.workers)
        results = {}
        small = _subset(gallery, min(n, ONE_BY_ONE_MAX))
        for label, batch, folder in (("batched", bundle.batch_size, gallery), ("one_by_one", 1, small)):
            index = GalleryIndex(folder, f"{checkpoint}|{label}", index_root / label)
            count = len(list(folder.iterdir()))
            t0 = time.perf_counter()
            upd = index.refresh(bundle.embed_images, batch, workers=bundle.workers)
            sync()
            results[label] = (time.perf_counter() - t0) / count  # seconds per image
            assert upd.embedded == count
        index = GalleryIndex(gallery, f"{checkpoint}|batched", index_root / "batched")
        t0 = time.perf_counter()
        upd = index.refresh(bundle.embed_images, bundle.batch_size, workers=bundle.workers)
        reuse = time.perf_counter() - t0
        assert upd.embedded == 0
        batch_size = bundle.batch_size
    return {
        "tool": "search", "bench": "gallery", "device": device,
        "checkpoint": checkpoint if checkpoint.startswith("tiny:") else Path(checkpoint).name,
        "images": n, "batch_size": batch_size,
        "batched_ips": round(1 / results["batched"], 1), "one_by_one_ips": round(1 / results["one_by_one"], 1),
        "batch_ratio": round(results["one_by_one"] / results["batched"], 2), "reuse_ms": round(reuse * 1000, 1),
    }  # fmt: skip


def _subset(gallery: Path, k: int) -> Path:
    """A folder holding the first ``k`` files of ``gallery`` (hard links)."""
    folder = gallery.with_name(gallery.name + f"-first{k}")
    folder.mkdir(exist_ok=True)
    for p in sorted(gallery.iterdir())[:k]:
        if not (folder / p.name).exists():
            os.link(p, folder / p.name)
    return folder


def _sync(device: str) -> Any:
    if device.startswith("cuda"):
        import torch

        return torch.cuda.synchronize
    return lambda: None


def run(device: str = "cpu", repeats: int = 3, full: bool | None = None, images: int | None = None) -> list[dict[str, Any]]:
    """Rows of measurements (gallery throughput per checkpoint, frame sampling per GOP)."""
    cache_dir = os.environ.get("VISAGENT_CACHE_DIR") or tempfile.mkdtemp(prefix="visagent-bench-")
    full = device.startswith("cuda") if full is None else full
    n = images or (512 if device.startswith("cuda") else 64)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="visagent-bench-media-") as tmp:
        root = Path(tmp)
        gallery = make_gallery(root / "gallery", n)
        checkpoints = ["tiny:clip"] + ([_full_clip(root)] if full else [])
        for i, ckpt in enumerate(checkpoints):
            rows.append(bench_gallery(ckpt, device, gallery, root / f"index-{i}", cache_dir))
        rows += bench_frames(root, repeats)
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    out = []
    for bench in ("gallery", "frames"):
        sel = [r for r in rows if r["bench"] == bench]
        if not sel:
            continue
        cols = [c for c in sel[0] if c not in ("tool", "bench")]
        widths = {c: max(len(c), *(len(str(r[c])) for r in sel)) for c in cols}
        out.append("  ".join(c.ljust(widths[c]) for c in cols))
        out += ["  ".join(str(r[c]).ljust(widths[c]) for c in cols) for r in sel]
        out.append("")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--images", type=int, default=None, help="gallery size (default 64 on CPU, 512 on CUDA)")
    parser.add_argument("--full", action="store_true", default=None, help="also CLIP ViT-B/32 (random weights)")
    parser.add_argument("--json", type=Path, default=None, help="write the rows as JSON here")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.basicConfig(level=logging.WARNING)
    rows = run(args.device, args.repeats, args.full, args.images)
    print(format_table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
