"""Writes ``moving_square.mp4`` (160x120, 24 frames at 8 fps = 3 s): a red square moving left to
right over a gray background. Run ``python scenarios/media/make_video.py`` to re-create it."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def make(path: Path, frames: int = 24, fps: int = 8, size: tuple[int, int] = (160, 120)) -> Path:
    import av

    w, h = size
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for k in range(frames):
            img = np.full((h, w, 3), 128, np.uint8)
            x = 8 + k * (w - 48) // max(frames - 1, 1)
            img[40:72, x : x + 32] = (220, 30, 30)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


if __name__ == "__main__":
    make(Path(__file__).with_name("moving_square.mp4"))
