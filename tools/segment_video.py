"""``segment_video``: SAM 2 video propagation — masks of prompted objects through a video.

Backend: transformers' ``Sam2VideoModel`` + ``Sam2VideoProcessor`` (family ``video_segment``,
default ``facebook/sam2.1-hiera-small``) in its streaming mode: frames are decoded one at a time
(``visagent.tools.video.iter_frames``), fed to ``model(inference_session, frame=...)`` and
forgotten; prompts go in with ``processor.add_inputs_to_inference_session`` on the frame they
belong to, so objects may start at different times.

Prompts (pixels of the video's displayed frames, [x0, y0, x1, y1] / [x, y]):

- a track id (``trk_2_0`` from ``track``): its box at its first sighting prompts the sampled frame
  nearest that time; with ``reprompt`` its later sightings prompt again (SAM 2 conditioning frames).
- a region id of a frame image (``det_3_0`` / ``mask_4_1`` on an ``img_k`` that ``video_frames``
  registered from this video): its box prompts the frame nearest that image's timestamp.
- pixel boxes and / or points at ``at`` seconds (default: the first processed frame). Points with
  pixel boxes join each box's prompt; points alone (or beside region ids only) prompt one object.

A prompt lands on the first processed frame at or after its time minus half a sampling interval
(the nearest sampled frame); masks are propagated forward from there (not backward).

Bounded memory, flat in video length: the session's per-frame state (pixel values, vision
features, non-conditioning memories, object pointers, tracked-frame marks, prompt inputs) is cut
after every frame to the last ``window`` frames SAM 2 reads (``max(num_maskmem,
max_object_pointers_in_encoder)``), conditioning frames to the first and the most recent
``MAX_COND_FRAMES - 1``; the high-resolution mask logits are dropped once the memory encoder has
used them. Masks leave as COCO RLE at once. ``peak_state_frames`` reports the most frames the
session held state for at any time. Options (``models.video_segment.options``):
``state_device`` (where the inference state lives, e.g. ``cpu`` to offload from a GPU; default the
model's device), ``window`` (frames of memory kept; default from the config).

Output: one ``VideoMask`` region per object (id ``vmask_<n>_<i>``; ``image`` = the video id;
``box`` = the mask's box at its first frame; ``first_seen`` / ``last_seen`` = times of the first
and last frames with a non-empty mask), holding ``frames``: per processed frame with a non-empty
mask, its time (seconds from the first frame), video frame index, area, box, object score and
COCO RLE (``{"size": [h, w], "counts": str}``, as ``segment`` writes them).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, Field, model_validator

from visagent.errors import ToolError
from visagent.tools.base import Box, Region, Tool, ToolInput, ToolOutput, clip_text
from visagent.tools.models import checked_config, register_loader
from visagent.tools.segment import check_prompts, fmt_box, mask_box, mask_to_rle

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    from PIL import Image

log = logging.getLogger(__name__)

FAMILY = "video_segment"
PREFIX = "vmask"
DEFAULT_FPS = 2.0
DEFAULT_MAX_FRAMES = 1200
MAX_FRAMES_LIMIT = 20_000
MAX_OBJECTS = 32
#: conditioning (prompted) frames kept per object: the first one and the most recent others
MAX_COND_FRAMES = 4
EDGE_TOLERANCE = 1.0


# -- input / output -------------------------------------------------------------------------
class SegmentVideoInput(ToolInput):
    """``video``: video id. ``boxes``: region ids (a track ``trk_2_0``, or ``det_3_0`` / ``mask_4_1``
    on a frame image of this video) or [x0, y0, x1, y1] pixels at ``at`` seconds; one object per
    box. ``points`` [[x, y]] pixels at ``at`` with ``point_labels`` (1 object / 0 background).
    Sampling: ``fps`` frames per second (default 2) or every ``stride``-th frame, within
    [``start``, ``end``) seconds, at most ``max_frames`` frames."""

    model_config = {"json_schema_extra": {"examples": [{"video": "vid_0", "boxes": [[10, 10, 60, 60]]}]}}

    video: str = Field(description="video id, e.g. vid_0")
    boxes: list[str | list[float]] | None = Field(
        default=None, description="track ids (trk_2_0), frame region ids (det_3_0) or [x0, y0, x1, y1] pixels at `at`"
    )
    points: list[list[float]] | None = Field(default=None, description="[[x, y]] pixel points at `at`")
    point_labels: list[int] | None = Field(default=None, description="1 foreground / 0 background per point")
    at: float | None = Field(default=None, ge=0, allow_inf_nan=False, description="time (s) of the frame pixel boxes / points are on; default start")
    fps: float | None = Field(default=None, gt=0, le=120, allow_inf_nan=False, description="frames per second processed (default 2)")
    stride: int | None = Field(default=None, ge=1, description="process every stride-th frame instead of fps")
    start: float = Field(default=0.0, ge=0, allow_inf_nan=False, description="start time (s)")
    end: float | None = Field(default=None, gt=0, allow_inf_nan=False, description="end time (s), exclusive; default the end")
    max_frames: int = Field(default=DEFAULT_MAX_FRAMES, ge=1, le=MAX_FRAMES_LIMIT, description="budget of processed frames")
    reprompt: bool = Field(default=False, description="prompt a track again at its later sightings")

    @model_validator(mode="after")
    def _check(self) -> "SegmentVideoInput":
        if not self.boxes and not self.points:
            raise ValueError("give boxes (track ids, region ids or [x0, y0, x1, y1]) or points to segment")
        if self.fps is not None and self.stride is not None:
            raise ValueError("give fps or stride, not both")
        if self.end is not None and self.end <= self.start:
            raise ValueError(f"end ({self.end:g} s) must be after start ({self.start:g} s)")
        if len(self.boxes or []) > MAX_OBJECTS:
            raise ValueError(f"at most {MAX_OBJECTS} boxes (objects) per call, got {len(self.boxes or [])}")
        check_prompts(self.boxes, self.points, self.point_labels)
        return self


class MaskFrame(BaseModel):
    """One object's mask on one processed frame: ``time`` seconds from the first frame; ``frame``
    the 0-based frame index in the video; ``area`` pixels; ``box`` tight [x0, y0, x1, y1] pixels
    (x1 / y1 exclusive); ``score`` SAM 2's object-present probability; ``rle`` COCO RLE at the
    video's frame size."""

    time: float
    frame: int
    area: int
    box: Box
    score: float
    rle: dict[str, Any]


class VideoMask(Region):
    """An object segmented through a video: id ``vmask_<n>_<i>``; ``image`` the video id; ``box``
    its mask's box at its first frame (the prompt box when no frame has a mask); ``score`` the mean
    object score over ``frames``; ``source`` the region id it was prompted from, if any;
    ``prompt_time`` seconds of the frame it was prompted on (None: its prompt time was never
    reached); ``first_seen`` / ``last_seen`` times of its first / last frame with a mask (None
    without any); ``mean_area`` pixels over ``frames``; ``frames`` the per-frame masks, in time order."""

    source: str | None = None
    prompt_time: float | None = None
    first_seen: float | None = None
    last_seen: float | None = None
    mean_area: float = 0.0
    frames: list[MaskFrame] = Field(default_factory=list)


class SegmentVideoOutput(ToolOutput):
    """``times``: seconds of the processed frames; ``sample_fps`` / ``stride``: the sampling;
    ``truncated``: the ``max_frames`` budget stopped it before ``end``; ``peak_state_frames``: the
    most frames the propagation held state for at once (bounded by the memory window, whatever
    the video's length)."""

    video: str
    width: int
    height: int
    duration: float
    sample_fps: float | None = None
    stride: int | None = None
    times: list[float]
    truncated: bool = False
    peak_state_frames: int = 0
    objects: list[VideoMask]

    def observation(self) -> str:
        total = max(1, self.width * self.height)
        span = f"{self.times[0]:.2f}-{self.times[-1]:.2f} s" if self.times else "no frames"
        rate = f"{self.sample_fps:g} fps" if self.sample_fps else (f"every {self.stride} frames" if (self.stride or 1) > 1 else "every frame")
        head = (
            f"{len(self.objects)} object{'s' if len(self.objects) != 1 else ''} segmented over "
            f"{len(self.times)} frames of {self.video} ({span}, {rate}"
            + (", stopped at the max_frames budget" if self.truncated else "")
            + ")"
        )
        parts = []
        for o in self.objects:
            label = f" {o.label!r}" if o.label else ""
            src = f" from {o.source}" if o.source else ""
            if not o.frames:
                when = "never prompted (its time was not reached)" if o.prompt_time is None else "no mask on any frame"
                parts.append(f"{o.id}{label}{src}: {when}")
                continue
            parts.append(
                f"{o.id}{label}{src}: {o.first_seen:.2f}-{o.last_seen:.2f} s, {len(o.frames)} frames with mask, "
                f"mean area {o.mean_area:.0f} px ({100 * o.mean_area / total:.1f}%)"
            )
        return clip_text(head + (": " + "; ".join(parts) if parts else ""))


# -- the backend -----------------------------------------------------------------------------
@dataclass
class Sam2VideoBundle:
    """``model``: Sam2VideoModel; ``processor``: Sam2VideoProcessor. ``state_device``: where the
    inference state is kept; ``window``: frames of memory kept (None: what the config reads)."""

    model: Any
    processor: Any
    device: str
    dtype: Any
    checkpoint: str
    state_device: str | None = None
    window: int | None = None

    def start(self, width: int, height: int) -> "Propagation":
        """A fresh streaming propagation for frames of ``width`` x ``height`` pixels."""
        session = self.processor.init_video_session(
            inference_device=self.device,
            inference_state_device=self.state_device or self.device,
            video_storage_device=self.state_device or self.device,
            dtype=self.dtype,
        )
        cfg = self.model.config
        window = self.window or max(int(cfg.num_maskmem), int(cfg.max_object_pointers_in_encoder))
        return Propagation(self, session, width, height, max(1, window))


@dataclass
class Prompt:
    """One prompt of one object: ``obj`` SAM 2 object id; pixels of the frame."""

    obj: int
    time: float
    box: list[float] | None = None
    points: list[list[float]] | None = None
    labels: list[int] | None = None


@dataclass
class Propagation:
    """Streaming SAM 2 over frames fed one at a time (``step``), its state cut to ``window``
    frames after each one (see the module docstring). ``peak_frames``: the most frames any
    per-frame store of the session held at once."""

    bundle: Sam2VideoBundle
    session: Any
    width: int
    height: int
    window: int
    index: int = 0
    peak_frames: int = 0
    started: set[int] = field(default_factory=set)

    def step(self, image: "Image.Image", prompts: list[Prompt]) -> tuple[list[int], "np.ndarray", list[float]]:
        """Feed the next frame with the prompts that land on it -> (object ids, masks bool (n, H, W)
        at the frame's size, object scores in [0, 1]); ([], empty, []) while no object exists yet."""
        import numpy as np
        import torch

        proc, model = self.bundle.processor, self.bundle.model
        k = self.index
        self.index += 1
        inputs = proc(images=image, return_tensors="pt")
        size = [self.height, self.width]
        new: list[int] = []
        for p in prompts:
            kwargs: dict[str, Any] = {}
            if p.box is not None:
                kwargs["input_boxes"] = [[p.box]]
            if p.points:
                kwargs["input_points"] = [[p.points]]
                kwargs["input_labels"] = [[p.labels or [1] * len(p.points)]]
            proc.add_inputs_to_inference_session(self.session, frame_idx=k, obj_ids=[p.obj], original_size=size, **kwargs)
            new.append(p.obj)
            self.started.add(p.obj)
        if new:  # each call names only its own object: every object prompted here has new inputs
            self.session.obj_with_new_inputs = list(dict.fromkeys(new))
        if not self.started:
            return [], np.zeros((0, self.height, self.width), bool), []
        pixels = inputs["pixel_values"][0].to(self.bundle.device, self.bundle.dtype)
        with torch.inference_mode():
            out = model(inference_session=self.session, frame=pixels, frame_idx=k)
            masks = proc.post_process_masks([out.pred_masks.float()], original_sizes=[size], binarize=True)[0][:, 0]
            scores = torch.sigmoid(out.object_score_logits.float().reshape(-1)).tolist()
        self._prune(k)
        return list(out.object_ids), masks.cpu().numpy().astype(bool), scores

    def held_frames(self) -> int:
        """The most frames any per-frame store of the session holds now."""
        s = self.session
        sizes = [len(s.processed_frames or {}), len(s.cache._vision_features)]
        for obj in s.output_dict_per_obj.values():
            sizes.append(len(obj["cond_frame_outputs"]) + len(obj["non_cond_frame_outputs"]))
        sizes += [len(v) for v in s.frames_tracked_per_obj.values()]
        sizes += [len(v) for v in s.point_inputs_per_obj.values()] + [len(v) for v in s.mask_inputs_per_obj.values()]
        return max(sizes)

    def _prune(self, k: int) -> None:
        s = self.session
        oldest = k - self.window + 1
        for key in [f for f in (s.processed_frames or {}) if f < k]:
            del s.processed_frames[key]
        for obj in s.output_dict_per_obj.values():
            non_cond = obj["non_cond_frame_outputs"]
            for key in [f for f in non_cond if f < oldest]:
                del non_cond[key]
            cond = obj["cond_frame_outputs"]
            if len(cond) > MAX_COND_FRAMES:
                keys = sorted(cond)
                for key in keys[1 : len(keys) - (MAX_COND_FRAMES - 1)]:
                    del cond[key]
            for out in (*non_cond.values(), *cond.values()):
                out.pop("high_res_masks", None)  # read only by this frame's memory encoding
        for tracked in s.frames_tracked_per_obj.values():
            for key in [f for f in tracked if f < oldest]:
                del tracked[key]
        for store in (*s.point_inputs_per_obj.values(), *s.mask_inputs_per_obj.values()):
            for key in [f for f in store if f < k]:
                del store[key]
        self.peak_frames = max(self.peak_frames, self.held_frames())


@register_loader(FAMILY, "transformers")
def load_sam2_video(checkpoint: str, device: str, dtype: Any, options: dict[str, Any]) -> Sam2VideoBundle:
    """A transformers SAM 2 checkpoint (``model_type`` ``sam2_video``, or ``sam2``: the same weights)
    as ``Sam2VideoModel`` + ``Sam2VideoProcessor``; Hub id or folder."""
    from transformers import Sam2VideoModel, Sam2VideoProcessor

    checked_config(checkpoint, "segment_video", ("sam2_video", "sam2"))
    model, info = Sam2VideoModel.from_pretrained(checkpoint, dtype=dtype, output_loading_info=True)
    missing = [k for k in info.get("missing_keys", ()) if k.startswith(("memory_", "mask_downsample", "object_pointer_proj"))]
    if missing:  # an image-only SAM 2 export: the video memory would be random
        raise ToolError(f"segment_video checkpoint {checkpoint} lacks SAM 2's video memory weights ({missing[0]}, ...); use a full SAM 2 checkpoint")
    model = model.to(device).eval()
    processor = Sam2VideoProcessor.from_pretrained(checkpoint)
    window = options.get("window")
    return Sam2VideoBundle(
        model, processor, device, dtype, checkpoint,
        state_device=options.get("state_device"), window=int(window) if window is not None else None,
    )  # fmt: skip


# -- helpers ---------------------------------------------------------------------------------
@dataclass
class _Object:
    """What the tool knows of one object while it runs."""

    source: str | None
    label: str | None
    prompts: list[Prompt]
    prompt_box: list[float]
    frames: list[MaskFrame] = field(default_factory=list)
    prompt_time: float | None = None


def _frames(path: str, inp: SegmentVideoInput, fps: float | None) -> Iterator[Any]:
    from visagent.tools.video import iter_frames

    try:
        yield from iter_frames(path, fps=fps, stride=inp.stride, start=inp.start, end=inp.end, max_frames=inp.max_frames + 1)
    except ValueError as exc:
        raise ToolError(str(exc)) from None


# -- the tool --------------------------------------------------------------------------------
class SegmentVideo(Tool):
    name: ClassVar[str] = "segment_video"
    description: ClassVar[str] = (
        "Segment objects through a video with SAM 2: prompt with track ids (trk_2_0), region ids of a "
        "video frame (det_3_0) or pixel boxes / points at a time; masks propagate over frames sampled "
        "at fps. Returns one vmask id per object with its time range and mean area."
    )
    families: ClassVar[tuple[str, ...]] = (FAMILY,)
    region_prefixes: ClassVar[tuple[str, ...]] = (PREFIX,)

    def _objects(self, inp: SegmentVideoInput, ctx: Any, meta: Any, t0: float, t1: float) -> list[_Object]:
        """Resolve every prompt to (object, time, pixels) and check it lies on the video and in range."""
        width, height, tol = meta.width, meta.height, EDGE_TOLERANCE
        at = inp.at if inp.at is not None else t0
        objects: list[_Object] = []

        def in_range(what: str, t: float) -> None:
            if not (t0 - 1e-6 <= t <= t1 + 1e-6):
                raise ToolError(f"{what} is at {t:.2f} s, outside the processed range {t0:.2f}-{t1:.2f} s; widen start / end")

        def on_frame(what: str, box: list[float]) -> list[float]:
            if box[0] < -tol or box[1] < -tol or box[2] > width + tol or box[3] > height + tol:
                raise ToolError(f"{what} {fmt_box(box)} is outside the frames of {inp.video} ({width}x{height} px)")
            clipped = [min(max(box[0], 0.0), width), min(max(box[1], 0.0), height),
                       min(max(box[2], 0.0), width), min(max(box[3], 0.0), height)]  # fmt: skip
            if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
                raise ToolError(f"{what} {fmt_box(box)} does not overlap the frames of {inp.video} ({width}x{height} px)")
            return clipped

        points = [[min(max(x, 0.0), width - 1.0), min(max(y, 0.0), height - 1.0)] for x, y in inp.points or []]
        for i, (x, y) in enumerate(inp.points or []):
            if not (-tol <= x <= width + tol and -tol <= y <= height + tol):
                raise ToolError(f"points[{i}] [{x:g}, {y:g}] is outside the frames of {inp.video} ({width}x{height} px)")
        labels = list(inp.point_labels) if inp.point_labels is not None else [1] * len(points)
        pixel_boxes = False
        if inp.points or any(not isinstance(b, str) for b in inp.boxes or []):
            in_range("at", at)
        for i, item in enumerate(inp.boxes or []):
            obj = len(objects) + 1
            if not isinstance(item, str):
                box = on_frame(f"boxes[{i}]", [float(v) for v in item])
                objects.append(_Object(None, None, [Prompt(obj, at, box, points or None, labels or None)], box))
                pixel_boxes = True
                continue
            region = ctx.region(item)
            track = getattr(region, "points", None)
            if track is not None and hasattr(region, "first_seen"):  # a TrackRegion
                if region.image != inp.video:
                    raise ToolError(f"track {item} is on {region.image}, not on {inp.video}")
                if not track:
                    raise ToolError(f"track {item} has no sightings to prompt with")
                sightings = list(track) if inp.reprompt else [track[0]]
                sightings = [s for s in sightings if t0 - 1e-6 <= s.time <= t1 + 1e-6] or sightings[:1]
                in_range(f"the first sighting of {item} in range", sightings[0].time)
                prompts = [Prompt(obj, float(s.time), on_frame(f"{item} box", [float(v) for v in s.box])) for s in sightings]
                objects.append(_Object(item, region.label, prompts, prompts[0].box or []))
                continue
            info = self._frame_info(ctx, region.image)
            if info is None or info.parent != inp.video or info.timestamp is None:
                where = f"{info.parent}" if info is not None and info.parent else "no video"
                raise ToolError(
                    f"region {item} is on {region.image}, which is not a frame of {inp.video} (it comes from {where}); "
                    f"give a track id, a region on a video_frames image of {inp.video}, or pixel boxes"
                )
            if (info.width, info.height) != (width, height):
                raise ToolError(f"region {item} is on a {info.width}x{info.height} frame; {inp.video} is {width}x{height}")
            t = float(info.timestamp)
            in_range(f"region {item} (frame {region.image})", t)
            box = on_frame(f"region {item} box", [float(v) for v in region.box])
            objects.append(_Object(item, region.label, [Prompt(obj, t, box)], box))
        if points and not pixel_boxes:
            obj = len(objects) + 1
            xs, ys = [p[0] for p in points], [p[1] for p in points]
            objects.append(_Object(None, None, [Prompt(obj, at, None, points, labels)], [min(xs), min(ys), max(xs) + 1, max(ys) + 1]))
        if len(objects) > MAX_OBJECTS:
            raise ToolError(f"at most {MAX_OBJECTS} objects per call, got {len(objects)}")
        return objects

    @staticmethod
    def _frame_info(ctx: Any, image_id: str) -> Any:
        media = getattr(ctx, "media", None)
        if media is None:
            return None
        try:
            return media.info(image_id)
        except Exception:  # noqa: BLE001 - an id the store does not know: not a frame
            return None

    @staticmethod
    def _sampling(inp: SegmentVideoInput, meta: Any) -> tuple[float | None, float, float, int]:
        """-> (fps or None, processed range start, end (s), estimated frame count); checks the budget."""
        fps = inp.fps if inp.fps is not None else (None if inp.stride is not None else DEFAULT_FPS)
        rate = meta.fps or 25.0
        t1 = min(inp.end, meta.duration) if inp.end is not None else meta.duration
        if inp.start >= meta.duration:
            raise ToolError(f"start ({inp.start:g} s) is past the end of the video ({meta.duration:.2f} s)")
        span = max(t1 - inp.start, 0.0)
        source = span * rate
        estimate = math.ceil(min(span * fps, source) if fps else source / (inp.stride or 1))
        if estimate > inp.max_frames + 1:
            how = f"{fps:g} fps" if fps else f"stride {inp.stride or 1}"
            raise ToolError(
                f"{inp.video}: {span:.1f} s at {how} is about {estimate} frames, over max_frames {inp.max_frames}; "
                "lower fps, raise stride, narrow start / end or raise max_frames"
            )
        return fps, inp.start, t1, max(estimate, 1)

    def run(self, input: SegmentVideoInput, ctx: Any) -> SegmentVideoOutput:  # noqa: A002
        from visagent.tools.video import probe, video_path

        path = video_path(ctx, input.video)
        meta = probe(path)
        fps, t0, t1, estimate = self._sampling(input, meta)
        objects = self._objects(input, ctx, meta, t0, t1)
        rate = meta.fps or 25.0
        tol = 0.5 / fps if fps else 0.5 * (input.stride or 1) / rate
        pending = sorted(((p.time, n, p) for n, o in enumerate(objects) for p in o.prompts), key=lambda x: (x[0], x[1]))
        times: list[float] = []
        truncated = False
        with ctx.model(FAMILY) as bundle:
            prop = bundle.start(meta.width, meta.height)
            for frame in _frames(path, input, fps):
                if getattr(ctx, "closed", False):  # timed out: stop decoding and free the model
                    raise ToolError(f"call {ctx.call} is over (it timed out); stopped after {len(times)} frames")
                if len(times) >= input.max_frames:
                    truncated = True
                    break
                due: dict[int, Prompt] = {}
                while pending and pending[0][0] <= frame.timestamp + tol:
                    _, n, p = pending.pop(0)
                    due[n] = p  # several sightings of one object landing on one frame: the latest wins
                    if objects[n].prompt_time is None:
                        objects[n].prompt_time = frame.timestamp
                if frame.image.size != (meta.width, meta.height):
                    raise ToolError(f"{input.video}: frame at {frame.timestamp:.2f} s is {frame.image.size}, not {meta.width}x{meta.height}")
                obj_ids, masks, scores = prop.step(frame.image, list(due.values()))
                times.append(frame.timestamp)
                if obj_ids:
                    self._record(objects, frame, obj_ids, masks, scores)
                ctx.progress("segmenting video frames", len(times), estimate)
        return SegmentVideoOutput(
            video=input.video, width=meta.width, height=meta.height, duration=round(meta.duration, 3),
            sample_fps=fps, stride=input.stride if fps is None else None, times=times, truncated=truncated,
            peak_state_frames=prop.peak_frames, objects=[self._region(ctx, input.video, i, o) for i, o in enumerate(objects)],
        )  # fmt: skip

    @staticmethod
    def _record(objects: list[_Object], frame: Any, obj_ids: list[int], masks: "np.ndarray", scores: list[float]) -> None:
        nonempty = [i for i, m in enumerate(masks) if m.any()]
        rles = mask_to_rle(masks[nonempty]) if nonempty else []
        for i, rle in zip(nonempty, rles, strict=True):
            mask = masks[i]
            box = mask_box(mask)
            assert box is not None
            objects[obj_ids[i] - 1].frames.append(
                MaskFrame(
                    time=frame.timestamp, frame=frame.index, area=int(mask.sum()), box=box,
                    score=min(1.0, max(0.0, float(scores[i]))) if math.isfinite(scores[i]) else 0.0, rle=rle,
                )
            )  # fmt: skip

    @staticmethod
    def _region(ctx: Any, video: str, i: int, o: _Object) -> VideoMask:
        frames = o.frames
        return VideoMask(
            id=ctx.region_id(PREFIX, i), image=video, box=frames[0].box if frames else o.prompt_box,
            score=sum(f.score for f in frames) / len(frames) if frames else None, label=o.label, source=o.source,
            prompt_time=o.prompt_time, first_seen=frames[0].time if frames else None,
            last_seen=frames[-1].time if frames else None,
            mean_area=round(sum(f.area for f in frames) / len(frames), 1) if frames else 0.0, frames=frames,
        )  # fmt: skip
