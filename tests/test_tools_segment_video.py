"""The ``segment_video`` tool on the tiny SAM 2 video checkpoint (``Sam2VideoModel`` saved with
``save_pretrained`` and read back by the real loader): prompts from pixel boxes, points, a region
of a frame image and a track; per-frame RLE masks with timestamps; bounded session state (flat in
video length, checked structurally); bad arguments; a scripted agent run citing its region ids."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from tests.helpers import VIDEO_H as H
from tests.helpers import VIDEO_W as W
from tests.helpers import write_video
from visagent.agent import Agent
from visagent.config import load_config
from visagent.errors import ToolError
from visagent.media import MediaStore
from visagent.planners import ScriptedPlanner
from visagent.pool import ModelPool
from visagent.session import Session
from visagent.tools.base import OBSERVATION_LIMIT, Region
from visagent.tools.segment import rle_to_mask
from visagent.tools.segment_video import (
    MAX_COND_FRAMES,
    Propagation,
    SegmentVideo,
    SegmentVideoInput,
    SegmentVideoOutput,
    load_sam2_video,
)  # fmt: skip
from visagent.tools.track import TrackPoint, TrackRegion
from visagent.tools.video import VideoFrames, VideoFramesInput

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # pycocotools + numpy 2

RATE = 10  # frames per second of the generated videos


def _config(**options: Any) -> Any:
    models = {"video_segment": {"checkpoint": "tiny:sam2-video", "options": options}} if options else {}
    return load_config(profile="tiny", overrides={"models": models}, environ={"VISAGENT_CACHE_DIR": os.environ["VISAGENT_CACHE_DIR"]})


_POOL = ModelPool()


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Any:
    """Tiny models run best on one torch thread (more oversubscribe a small shared CPU)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_video(tmp_path_factory.mktemp("segvid") / "clip.mp4", [i / RATE for i in range(30)])  # 3 s


def _session(*media: Any, pool: ModelPool = _POOL, **options: Any) -> Session:
    store = MediaStore()
    for m in media:
        store.add(str(m))
    return Session(_config(**options), pool, store)


def _run(session: Session, **args: Any) -> SegmentVideoOutput:
    return SegmentVideo().run(SegmentVideoInput(**args), session.open_call())


def _check_masks(out: SegmentVideoOutput) -> None:
    """Every object's frames: processed times, video frame indices, RLE = area, box = mask box."""
    assert out.times == sorted(set(out.times))
    for obj in out.objects:
        assert obj.image == out.video
        times = [f.time for f in obj.frames]
        assert times == sorted(times) and set(times) <= set(out.times)
        for f in obj.frames:
            assert f.frame == round(f.time * RATE)
            mask = rle_to_mask(f.rle)
            assert mask.shape == (out.height, out.width) and int(mask.sum()) == f.area > 0
            ys, xs = np.nonzero(mask)
            assert f.box == [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]
            assert 0.0 <= f.score <= 1.0
        if obj.frames:
            assert obj.box == obj.frames[0].box
            assert (obj.first_seen, obj.last_seen) == (obj.frames[0].time, obj.frames[-1].time)
            assert obj.mean_area == pytest.approx(sum(f.area for f in obj.frames) / len(obj.frames), abs=0.05)
    obs = out.observation()
    assert len(obs) <= OBSERVATION_LIMIT and all(o.id in obs for o in out.objects[:3])


# -- the checkpoint through its real loader ------------------------------------------------------
def test_tiny_checkpoint_loads_through_from_pretrained(tmp_path: Path) -> None:
    from transformers import Sam2VideoModel, Sam2VideoProcessor

    from visagent.tools.models import tiny_builder
    from visagent.tools.tiny.segment_video import build_tiny_sam2_video

    assert tiny_builder("sam2-video", "transformers") is build_tiny_sam2_video
    folder = tmp_path / "sam2-video"
    folder.mkdir()
    build_tiny_sam2_video(folder)
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
    bundle = load_sam2_video(str(folder), "cpu", __import__("torch").float32, {"window": 5})
    assert isinstance(bundle.model, Sam2VideoModel) and isinstance(bundle.processor, Sam2VideoProcessor)
    assert bundle.model.config.model_type == "sam2_video" and bundle.window == 5
    prop = bundle.start(W, H)
    assert isinstance(prop, Propagation) and prop.window == 5
    # an image-only export (no memory weights) is refused, not run with random memory modules
    from safetensors.torch import load_file, save_file

    image_only = tmp_path / "image-only"
    image_only.mkdir()
    for f in folder.iterdir():
        if f.name != "model.safetensors":
            (image_only / f.name).write_bytes(f.read_bytes())
    weights = load_file(folder / "model.safetensors")
    save_file({k: v for k, v in weights.items() if not k.startswith("memory_")}, image_only / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ToolError, match="lacks SAM 2's video memory weights"):
        load_sam2_video(str(image_only), "cpu", None, {})
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text('{"model_type": "sam"}')
    with pytest.raises(ToolError, match="model_type 'sam'; supported: sam2_video, sam2"):
        load_sam2_video(str(tmp_path / "other"), "cpu", None, {})


# -- prompts -----------------------------------------------------------------------------------
def test_boxes_and_points_give_masks_per_sampled_frame(video: Path) -> None:
    session = _session(video)
    out = _run(session, video="vid_0", boxes=[[5, 5, 30, 30], [34, 10, 60, 44]], fps=4)
    assert len(out.times) == 12 and out.times[0] == 0.0 and out.sample_fps == 4
    assert all(abs(b - a - 0.25) < 0.051 for a, b in zip(out.times, out.times[1:]))  # 4 fps of a 10 fps video
    assert [o.id for o in out.objects] == ["vmask_1_0", "vmask_1_1"]
    assert all(o.prompt_time == 0.0 and o.frames for o in out.objects)
    _check_masks(out)
    # points alone at a later time: one object, starting at the sampled frame nearest `at`
    later = _run(session, video="vid_0", points=[[20, 20], [40, 30]], point_labels=[1, 0], at=1.1, stride=3, end=2.5)
    assert later.stride == 3 and later.times == [0.0, 0.3, 0.6, 0.9, 1.2, 1.5, 1.8, 2.1, 2.4]
    (obj,) = later.objects
    assert obj.id == "vmask_2_0" and obj.prompt_time == 1.2 and obj.first_seen == 1.2
    _check_masks(later)
    assert SegmentVideoOutput.model_validate_json(later.model_dump_json()) == later


def test_region_of_a_frame_image_and_a_track(video: Path) -> None:
    session = _session(video)
    frames = VideoFrames().run(VideoFramesInput(video="vid_0", frames=3), session.open_call())  # call 1
    frame = frames.frames[1]  # at 1.5 s
    det = Region(id="det_2_0", image=frame.image, box=[8, 8, 40, 36], score=0.9, label="cup")
    points = [TrackPoint(time=t, frame=round(t * RATE), box=[6 + t, 6, 30 + t, 30], score=0.8) for t in (0.5, 1.0, 2.0)]
    track = TrackRegion(id="trk_3_0", image="vid_0", box=points[0].box, label="ball", points=points,
                        first_seen=0.5, last_seen=2.0, mean_score=0.8)  # fmt: skip
    session.record([det], "detect", step=1, call=2)
    session.record([track], "track", step=2, call=3)
    session.calls = 3
    out = _run(session, video="vid_0", boxes=["det_2_0", "trk_3_0"], fps=4, reprompt=True)
    by_source = {o.source: o for o in out.objects}
    assert by_source["det_2_0"].label == "cup" and by_source["det_2_0"].prompt_time == frame.timestamp == 1.5
    assert by_source["trk_3_0"].label == "ball" and by_source["trk_3_0"].prompt_time == 0.5
    assert by_source["trk_3_0"].first_seen >= 0.5 and by_source["det_2_0"].first_seen >= 1.5
    assert [o.id for o in out.objects] == ["vmask_4_0", "vmask_4_1"]
    _check_masks(out)
    # the region ids are registered and citable like any region
    session.record(out.regions(), "segment_video", step=3, call=4)
    assert session.region("vmask_4_1").source == "trk_3_0"


def test_scripted_run_cites_video_masks(video: Path) -> None:
    plan = [
        {"tool": "video_frames", "args": {"video": "vid_0", "frames": 2}},
        {"tool": "segment", "args": {"image": "img_0", "boxes": [[4, 4, 40, 40]]}},
        {"tool": "segment_video", "args": {"video": "vid_0", "boxes": ["mask_2_0", [30, 10, 60, 40]], "fps": 3}},
        {"final": "two objects, tracked", "evidence": ["vmask_3_0", "vmask_3_1"]},
    ]
    ans = Agent(_config(), planner=ScriptedPlanner(plan), pool=_POOL).ask("segment the objects through the video", [str(video)])
    assert ans.status == "answered", ans.error
    step = ans.trace.tool_steps()[-1]
    assert step.tool == "segment_video" and step.models == ["tiny:sam2-video"]
    assert [e.id for e in ans.evidence] == ["vmask_3_0", "vmask_3_1"]
    objects = step.output["objects"]
    assert objects[0]["source"] == "mask_2_0"  # prompted on the frame nearest img_0 (0.75 s) at 3 fps
    assert abs(objects[0]["prompt_time"] - 0.75) <= 0.5 / 3 + 1e-6 and objects[1]["prompt_time"] == 0.0
    assert "vmask_3_0" in step.observation and "frames with mask" in step.observation


# -- bounded state -----------------------------------------------------------------------------
def test_state_is_bounded_whatever_the_length(video: Path) -> None:
    """The propagation holds at most window + conditioning frames, however many frames it sees:
    the same peak for 8 and 20 frames (a track prompting again on every other frame)."""
    window = 2
    session = _session(video, pool=ModelPool(), window=window)
    points = [TrackPoint(time=i / RATE, frame=i, box=[10, 10, 40, 40], score=0.9) for i in range(0, 30, 2)]
    track = TrackRegion(id="trk_1_0", image="vid_0", box=points[0].box, points=points, first_seen=0.0, last_seen=2.8, mean_score=0.9)
    session.record([track], "track", step=0, call=1)
    session.calls = 1
    peaks = []
    for end in (0.8, 2.0):
        out = _run(session, video="vid_0", boxes=["trk_1_0"], stride=1, end=end, reprompt=True)
        assert len(out.times) == round(end * RATE)
        peaks.append(out.peak_state_frames)
    assert peaks[0] == peaks[1] <= window + MAX_COND_FRAMES


def test_pruning_keeps_the_session_flat() -> None:
    """Propagation._prune on a real inference session fed 500 frames' worth of state."""
    import torch
    from transformers import Sam2VideoInferenceSession

    session = Sam2VideoInferenceSession(video_height=H, video_width=W, dtype=torch.float32)
    prop = Propagation(bundle=None, session=session, width=W, height=H, window=7)  # type: ignore[arg-type]
    obj = session.obj_id_to_idx(1)
    for k in range(500):
        session.add_new_frame(torch.zeros(3, 8, 8), k)
        session.cache.cache_vision_features(k, {"vision_feats": torch.zeros(1)})
        cond = k % 25 == 0
        session.add_point_inputs(obj, k, {"point_coords": torch.zeros(1, 1, 1, 2)}) if cond else None
        session.store_output(obj, k, output_value={"pred_masks": torch.zeros(1), "high_res_masks": torch.zeros(4)}, is_conditioning_frame=cond)
        session.frames_tracked_per_obj[obj][k] = {"reverse": False}
        prop._prune(k)
        assert prop.held_frames() <= 7 + MAX_COND_FRAMES
    outputs = session.output_dict_per_obj[obj]
    assert sorted(outputs["non_cond_frame_outputs"]) == list(range(493, 500))
    assert sorted(outputs["cond_frame_outputs"]) == [0, 425, 450, 475]  # the first and the latest
    assert list(session.processed_frames) == [499] and not any("high_res_masks" in o for o in outputs["non_cond_frame_outputs"].values())
    assert prop.peak_frames == 7 + MAX_COND_FRAMES


# -- bad input ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"video": "vid_0"}, "give boxes"),
        ({"video": "vid_0", "points": [[1, 2]], "fps": 2, "stride": 2}, "fps or stride, not both"),
        ({"video": "vid_0", "points": [[1, 2]], "start": 2, "end": 1}, "must be after start"),
        ({"video": "vid_0", "boxes": [[5, 5, 2, 9]]}, "is empty"),
        ({"video": "vid_0", "points": [[1, 2]], "point_labels": [3]}, "1 \\(foreground\\) or 0"),
    ],
)
def test_bad_arguments_are_validation_errors(args: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        SegmentVideoInput(**args)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"boxes": [[5, 5, 200, 30]]}, "outside the frames of vid_0 \\(64x48 px\\)"),
        ({"points": [[10, 10]], "at": 9.0}, "at is at 9.00 s, outside the processed range 0.00-3.00 s"),
        ({"points": [[10, 10]], "fps": 10, "max_frames": 5}, "about 30 frames, over max_frames 5; lower fps"),
        ({"points": [[10, 10]], "start": 7.0}, "past the end of the video"),
        ({"boxes": ["det_9_9"]}, "unknown region id 'det_9_9'"),
        ({"boxes": ["det_1_0"]}, "not a frame of vid_0"),
        ({"boxes": ["trk_1_1"]}, "track trk_1_1 is on vid_1, not on vid_0"),
        ({"video": "img_0", "points": [[1, 1]]}, "img_0"),
    ],
)
def test_bad_requests_are_one_line_tool_errors(video: Path, args: dict[str, Any], message: str) -> None:
    session = _session(video, "sample:coffee")
    session.record([Region(id="det_1_0", image="img_0", box=[1, 1, 9, 9])], "detect", step=0, call=1)
    p = TrackPoint(time=0.0, frame=0, box=[1, 1, 9, 9], score=1.0)
    session.record([TrackRegion(id="trk_1_1", image="vid_1", box=p.box, points=[p], first_seen=0, last_seen=0, mean_score=1)], "track", step=0, call=1)
    with pytest.raises(ToolError, match=message) as info:
        _run(session, **{"video": "vid_0", **args})
    assert "\n" not in str(info.value)


def test_a_timed_out_call_stops_propagating(video: Path) -> None:
    """Once the runner closes the call (timeout), the loop stops at the next frame, model freed."""
    session = _session(video)
    seen: list[int] = []

    def progress(message: str, done: int, total: int) -> None:
        seen.append(done)
        if done == 3:
            ctx.close()

    ctx = session.open_call(progress)
    with pytest.raises(ToolError, match="is over \\(it timed out\\); stopped after 3 frames"):
        SegmentVideo().run(SegmentVideoInput(video="vid_0", boxes=[[5, 5, 30, 30]], fps=5), ctx)
    assert seen == [1, 2, 3]
