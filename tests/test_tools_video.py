"""Video tools on videos written with PyAV in the tests (constant and variable frame rate, very
short, rotated, corrupt, audio-only): uniform sampling by time, frame identity (each frame's
index is painted into its pixels), rotation, errors; ``video_frames`` registering frames;
``video_qa`` on a tiny Video-LLaVA through the real loader; agent and CLI runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from tests.helpers import VIDEO_H as H
from tests.helpers import VIDEO_W as W
from tests.helpers import ask_cli, frame_index, write_video
from visagent.config import load_config
from visagent.context import CallContext
from visagent.errors import MediaError, ToolError
from visagent.media import MediaStore
from visagent.pool import ModelPool
from visagent.session import Session
from visagent.tools.base import OBSERVATION_LIMIT
from visagent.tools.video import (
    VideoFrames,
    VideoFramesInput,
    VideoQA,
    VideoQAInput,
    VideoReadError,
    decode_all,
    probe,
    sample_frames,
    uniform_timestamps,
)  # fmt: skip
from visagent.types import ErrorStep


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("videos")
    vfr_times = [0.0, 0.05, 0.1, 1.5, 1.6, 3.0, 3.05, 4.9, 5.5, 7.0]
    return {
        "cfr": write_video(d / "cfr.mp4", [i / 10 for i in range(100)]),  # 10 s at 10 fps
        "vfr": write_video(d / "vfr.mp4", vfr_times),
        "short": write_video(d / "short.mp4", [0.0, 0.1, 0.2]),
        "rot90": write_video(d / "rot90.mp4", [i / 10 for i in range(20)], rotation=90),
        "rot270": write_video(d / "rot270.mp4", [i / 10 for i in range(20)], rotation=270),
        "minute": write_video(d / "minute.mp4", [i / 5 for i in range(300)]),  # 60 s at 5 fps
    }


VFR_TIMES = [0.0, 0.05, 0.1, 1.5, 1.6, 3.0, 3.05, 4.9, 5.5, 7.0]


def _ctx(*media: Any, checkpoint: str = "tiny:video-llava", pool: Any = None) -> CallContext:
    config = load_config(
        profile="tiny", overrides={"models": {"video": {"checkpoint": checkpoint}}},
        environ={"VISAGENT_CACHE_DIR": os.environ["VISAGENT_CACHE_DIR"]},
    )  # fmt: skip
    store = MediaStore()
    for m in media:
        store.add(m)
    ctx = Session(config, pool or _POOL, store).open_call()
    return ctx


_POOL = ModelPool()


# -- sampling --------------------------------------------------------------------------------
def test_uniform_timestamps() -> None:
    assert uniform_timestamps(8.0, 4) == [1.0, 3.0, 5.0, 7.0]
    assert uniform_timestamps(1.0, 1, start=2.0) == [2.5]
    with pytest.raises(ValueError, match="at least 1"):
        uniform_timestamps(1.0, 0)


def test_constant_rate_sampling_is_uniform_and_exact(videos: dict[str, Path]) -> None:
    meta, frames = sample_frames(str(videos["cfr"]), 8)
    assert meta.duration == pytest.approx(10.0, abs=0.1) and meta.frames == 100 and meta.rotation == 0
    ts = [f.timestamp for f in frames]
    assert len(frames) == 8 and ts == sorted(set(ts)) and all(0.0 <= t < meta.duration for t in ts)
    for t, target in zip(ts, uniform_timestamps(meta.duration, 8)):
        assert target - 0.1 - 1e-6 <= t <= target + 1e-6  # the frame on screen at the target time
    for f in frames:  # the pixels are those of the frame at that timestamp
        assert frame_index(f.image) == round(f.timestamp * 10)
        assert f.image.size == (W, H) and f.image.mode == "RGB"
    gaps = np.diff(ts)
    assert gaps.max() - gaps.min() <= 0.1 + 1e-6


def test_variable_rate_sampling_follows_time(videos: dict[str, Path]) -> None:
    meta, frames = sample_frames(str(videos["vfr"]), 8)
    assert meta.duration >= 7.0  # the container under-reports it; the last packet decides
    targets = uniform_timestamps(meta.duration, 8)
    expected = []
    for target in targets:  # the frame shown at each target time: the last one at or before it
        idx = max(i for i, t in enumerate(VFR_TIMES) if t <= target + 1e-6)
        if idx not in expected:
            expected.append(idx)
    assert [frame_index(f.image) for f in frames] == expected
    assert [f.timestamp for f in frames] == pytest.approx([VFR_TIMES[i] for i in expected], abs=1e-3)
    assert all(0.0 <= f.timestamp < meta.duration for f in frames)


def test_video_shorter_than_frame_count(videos: dict[str, Path]) -> None:
    meta, frames = sample_frames(str(videos["short"]), 8)
    assert [f.timestamp for f in frames] == pytest.approx([0.0, 0.1, 0.2], abs=1e-3)
    assert [frame_index(f.image) for f in frames] == [0, 1, 2]
    _, two = sample_frames(str(videos["short"]), 2)
    assert len(two) == 2 and two[0].timestamp < two[1].timestamp


@pytest.mark.parametrize("name, rotation", [("rot90", 90), ("rot270", 270)])
def test_rotation_metadata_is_applied(videos: dict[str, Path], name: str, rotation: int) -> None:
    meta, frames = sample_frames(str(videos[name]), 4)
    assert meta.rotation == rotation and (meta.width, meta.height) == (H, W)
    img = np.asarray(frames[0].image).astype(float)
    assert img.shape[:2] == (W, H)  # portrait: rows = original width
    # the white strip on the left of the coded frame: a counter-clockwise quarter turn (90) puts
    # it at the bottom, a clockwise one (270) at the top
    bottom, top = img[-W // 8 :].mean(), img[: W // 8].mean()
    assert (bottom > 200 and top < 150) if rotation == 90 else (top > 200 and bottom < 150)
    assert frame_index(frames[0].image) == round(frames[0].timestamp * 10)
    store = MediaStore()
    info = store.info(store.add(str(videos[name])))
    assert (info.kind, info.width, info.height) == ("video", H, W)  # the media store reports the shown size


def test_sampling_does_not_decode_every_frame(videos: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    import visagent.tools.video as video

    converted: list[int] = []
    original = video._to_image
    monkeypatch.setattr(video, "_to_image", lambda f: converted.append(1) or original(f))
    _, frames = sample_frames(str(videos["minute"]), 8)
    assert len(frames) == 8 and len(converted) == 8
    assert [frame_index(f.image) for f in frames] == [round(f.timestamp * 5) for f in frames]
    assert len(decode_all(str(videos["minute"]))) == 300


def test_corrupt_truncated_and_audio_only_files(videos: dict[str, Path], tmp_path: Path) -> None:
    import av

    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypisom" + b"\x00" * 8 + b"garbage" * 100)
    data = videos["cfr"].read_bytes()
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(data[: len(data) // 2])
    audio = tmp_path / "audio.mp4"
    with av.open(str(audio), "w") as c:
        s = c.add_stream("aac", rate=16000)
        for i in range(5):
            f = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            f.sample_rate, f.pts = 16000, i * 1024
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    for path, message in ((bad, "corrupt or unreadable"), (truncated, "corrupt or unreadable"), (audio, "no video stream")):
        with pytest.raises(VideoReadError, match=message) as exc:
            sample_frames(str(path), 8)
        assert "\n" not in str(exc.value) and str(path) in str(exc.value)
        with pytest.raises(MediaError, match=message):
            MediaStore().add(str(path))
    with pytest.raises(VideoReadError, match="video not found"):
        probe(str(tmp_path / "missing.mp4"))
    with pytest.raises(ValueError, match="between 1 and 64"):
        sample_frames(str(videos["cfr"]), 0)


# -- video_frames ----------------------------------------------------------------------------
def test_video_frames_registers_images(videos: dict[str, Path]) -> None:
    ctx = _ctx(str(videos["cfr"]), "sample:coffee")
    out = VideoFrames().run(VideoFramesInput(video="vid_0", frames=5), ctx)
    assert [f.image for f in out.frames] == [f"img_{i}" for i in range(1, 6)]
    assert out.duration == pytest.approx(10.0, abs=0.1)
    for ref in out.frames:
        info = ctx.media.info(ref.image)
        assert info.parent == "vid_0" and info.timestamp == ref.timestamp
        assert frame_index(ctx.image(ref.image)) == round(ref.timestamp * 10)
    assert ctx.image_ids() == ["img_0", *[f.image for f in out.frames]]
    obs = out.observation()
    assert len(obs) <= OBSERVATION_LIMIT and "img_1 @" in obs and "vid_0" in obs
    with pytest.raises(ToolError, match="is an image, not a video"):
        VideoFrames().run(VideoFramesInput(video="img_0"), ctx)
    with pytest.raises(ValueError, match="less than or equal to 64"):
        VideoFramesInput(video="vid_0", frames=65)


# -- video_qa --------------------------------------------------------------------------------
def test_video_qa_tiny_video_llava(videos: dict[str, Path]) -> None:
    ctx = _ctx(str(videos["cfr"]))
    out = VideoQA().run(VideoQAInput(video="vid_0", question="what is happening?"), ctx)
    assert isinstance(out.answer, str) and out.frames_fed == 8 and len(out.timestamps) == 8
    assert out.timestamps == sorted(out.timestamps) and all(0 <= t < 10.0 for t in out.timestamps)
    assert ctx.models == ["tiny:video-llava"]
    with ctx.model("video") as bundle:
        assert type(bundle.model).__name__ == "VideoLlavaForConditionalGeneration"
        assert type(bundle.processor).__name__ == "VideoLlavaProcessor"
        ids = bundle.processor.tokenizer.convert_tokens_to_ids(["<image>", "<video>"])
        assert ids == [bundle.model.config.image_token_index, bundle.model.config.video_token_index]
    assert len(out.observation()) <= OBSERVATION_LIMIT


def test_video_qa_short_video_repeats_frames(videos: dict[str, Path]) -> None:
    ctx = _ctx(str(videos["short"]))
    out = VideoQA().run(VideoQAInput(video="vid_0", question="what moves?", frames=8), ctx)
    assert out.timestamps == pytest.approx([0.0, 0.1, 0.2], abs=1e-3) and out.frames_fed == 8
    assert "repeated to 8" in out.observation()


def test_video_qa_refuses_other_architectures(videos: dict[str, Path]) -> None:
    ctx = _ctx(str(videos["short"]), checkpoint="tiny:clip", pool=ModelPool())
    with pytest.raises(ToolError, match="'clip' model; the video tool needs Video-LLaVA"):
        VideoQA().run(VideoQAInput(video="vid_0", question="what?"), ctx)


# -- agent and CLI ---------------------------------------------------------------------------
def test_agent_video_frames_then_search(videos: dict[str, Path], make_agent: Any) -> None:
    plan = [
        {"tool": "video_frames", "args": {"video": "vid_0", "frames": 4}},
        {"tool": "search", "args": {"query": "a white strip", "images": ["img_0", "img_1", "img_2", "img_3"]}},
        {"tool": "video_qa", "args": {"video": "vid_0", "question": "what is shown?"}},
        {"final": "a white strip", "evidence": ["obs_1", "obs_3"]},
    ]
    ans = make_agent(plan).ask("what is in the video?", [str(videos["cfr"])])
    assert ans.status == "answered", ans.error
    frames, search, qa = ans.trace.tool_steps()
    assert [f["image"] for f in frames.output["frames"]] == ["img_0", "img_1", "img_2", "img_3"]
    assert sorted(r["image"] for r in search.output["results"]) == ["img_0", "img_1", "img_2", "img_3"]
    assert len(qa.output["timestamps"]) == 8
    assert not [s for s in ans.trace.steps if isinstance(s, ErrorStep)]


def test_cli_video_frames_then_count(videos: dict[str, Path], tmp_path: Path) -> None:
    video = tmp_path / "clip.bin"  # detected as a video by content, whatever the name
    video.write_bytes(videos["cfr"].read_bytes())
    plan: list[dict[str, Any]] = [{"tool": "video_frames", "args": {"video": "vid_0", "frames": 3}}]
    plan += [{"tool": "count", "args": {"image": f"img_{i}", "label": "person", "box_threshold": 0.0}} for i in range(3)]
    plan.append({"final": "done", "evidence": ["obs_1", "obs_2"]})
    proc = ask_cli(tmp_path, [str(video)], "how many people appear in the video?", plan)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    assert result["status"] == "answered"
    media = result["trace"]["meta"]["media"]
    assert media[0]["id"] == "vid_0" and media[0]["kind"] == "video"
    tools = [s for s in result["trace"]["steps"] if s.get("type") == "tool"]
    assert tools[0]["tool"] == "video_frames" and len(tools[0]["output"]["frames"]) == 3
    assert [t["tool"] for t in tools[1:]] == ["count"] * 3
    for i, step in enumerate(tools[1:]):  # one count per frame, on that frame, its ids citing it
        out = step["output"]
        assert out["image"] == f"img_{i}" and out["count"] == len(out["ids"]) >= 0
        assert all(d["image"] == f"img_{i}" for d in out["detections"])
        assert all(0 <= d["box"][0] <= d["box"][2] <= 64 and 0 <= d["box"][1] <= d["box"][3] <= 48 for d in out["detections"])
    assert not [s for s in result["trace"]["steps"] if s.get("type") == "error"]


def test_cli_corrupt_video_is_a_usage_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypisom" + b"\x00" * 8 + b"garbage" * 100)
    cmd = [sys.executable, "-m", "visagent.cli", "ask", str(bad), "what happens?", "--profile", "tiny",
           "--planner", "script:" + str(tmp_path / "unused.yaml")]  # fmt: skip
    (tmp_path / "unused.yaml").write_text(yaml.safe_dump([{"final": "x"}]))
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=dict(os.environ, HF_HUB_OFFLINE="1"),
                          cwd=Path(__file__).parents[1])  # fmt: skip
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.strip().splitlines() if not ln.startswith("note:")]
    assert len(lines) == 1 and "corrupt or unreadable" in lines[0] and "bad.mp4" in lines[0]


@pytest.mark.gpu
def test_video_qa_on_cuda(videos: dict[str, Path]) -> None:
    config = load_config(
        profile="tiny", overrides={"device": "cuda", "dtype": "bfloat16", "models": {"video": {"checkpoint": "tiny:video-llava"}}},
        environ={"VISAGENT_CACHE_DIR": os.environ["VISAGENT_CACHE_DIR"]},
    )  # fmt: skip
    store = MediaStore()
    store.add(str(videos["vfr"]))
    ctx = Session(config, ModelPool(), store).open_call()
    out = VideoQA().run(VideoQAInput(video="vid_0", question="what happens?"), ctx)
    assert ctx.model_key("video").device == "cuda" and out.frames_fed == 8 and isinstance(out.answer, str)
    with ctx.model("video") as bundle:
        assert next(bundle.model.parameters()).device.type == "cuda"
