"""Video tools: ``video_qa`` (Video-LLaVA over sampled frames) and ``video_frames``.

Frame sampling (PyAV): ``n`` timestamps uniform over the video's duration, at the middle of ``n``
equal slices (``start + duration * (i + 0.5) / n``), so every timestamp lies inside the video.
Each is reached by seeking to the keyframe before it and decoding forward to the frame shown at
that time; the file is never decoded whole (nearby targets continue decoding instead of seeking).
Frame timestamps come from the frames' own presentation times, so variable-frame-rate videos are
sampled by time, not by frame index. A video with fewer frames than asked gives each of its frames
once. Rotation metadata (the display matrix, ``VideoFrame.rotation``) is applied, so frames come
out the way players show them.

``video_qa`` uses ``VideoLlavaForConditionalGeneration`` + ``VideoLlavaProcessor`` (family
``video``, default ``LanguageBind/Video-LLaVA-7B-hf``); prompt ``USER: <video>\\n{question}
ASSISTANT:``. Video-LLaVA was trained on 8 frames: when a video has fewer distinct frames they are
repeated (in order) to fill the count, as its reference pipeline does.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

from visagent.errors import ToolError
from visagent.tools.base import Tool, ToolInput, ToolOutput, clip_text
from visagent.tools.models import register_loader

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

log = logging.getLogger(__name__)

FAMILY = "video"
MAX_FRAMES = 64
#: targets closer than this (seconds) after the last decoded frame are reached by decoding on
SEEK_THRESHOLD_S = 1.0
PROMPT = "USER: <video>\n{question} ASSISTANT:"


# -- sampling --------------------------------------------------------------------------------
@dataclass
class VideoMeta:
    """What sampling needs to know. ``start``/``duration`` in seconds; ``frames``: the container's
    frame count (0 when unknown); ``rotation``: counter-clockwise degrees to display the frames;
    ``width``/``height``: displayed size (after rotation)."""

    path: str
    duration: float
    start: float
    frames: int
    fps: float | None
    rotation: int
    width: int
    height: int


@dataclass
class Frame:
    """A decoded frame: ``timestamp`` in seconds from the start of the video; ``image`` RGB, rotated
    for display; ``pts`` the frame's presentation time stamp (stream time base)."""

    timestamp: float
    image: "Image.Image"
    pts: int | None = None
    index: int = field(default=-1)


class VideoReadError(ToolError):
    """A video cannot be decoded (corrupt, truncated, no video stream)."""


def _fail(path: str, exc: BaseException) -> VideoReadError:
    return VideoReadError(f"{path}: video is corrupt or unreadable ({type(exc).__name__}: {exc})")


def _open(path: str) -> Any:
    import av

    if not Path(path).is_file():
        raise VideoReadError(f"video not found: {path}")
    try:
        container = av.open(str(path))
    except Exception as exc:  # noqa: BLE001 - av raises many error types
        raise _fail(path, exc) from None
    if not container.streams.video:
        container.close()
        raise VideoReadError(f"{path}: no video stream (audio-only or not a video)")
    return container


def uniform_timestamps(duration: float, n: int, start: float = 0.0) -> list[float]:
    """``n`` timestamps at the middle of ``n`` equal slices of ``[start, start + duration)``."""
    if n < 1:
        raise ValueError(f"number of frames must be at least 1, got {n}")
    if not math.isfinite(duration) or duration < 0:
        raise ValueError(f"duration must be a finite non-negative number, got {duration}")
    return [start + duration * (i + 0.5) / n for i in range(n)]


def probe(path: str) -> VideoMeta:
    """Read the video's duration, frame count, rate and rotation (decodes one frame)."""
    container = _open(path)
    try:
        stream = container.streams.video[0]
        tb = float(stream.time_base) if stream.time_base is not None else None
        start = float(stream.start_time * stream.time_base) if stream.start_time is not None and tb else 0.0
        if stream.duration is not None and tb:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / 1_000_000
        else:
            duration = 0.0
        try:
            first = next(container.decode(stream), None)
        except Exception as exc:  # noqa: BLE001
            raise _fail(path, exc) from None
        if first is None:
            raise VideoReadError(f"{path}: video has 0 decodable frames")
        rotation = int(getattr(first, "rotation", 0) or 0) % 360
        w, h = first.width, first.height
        if rotation in (90, 270):
            w, h = h, w
        fps = float(stream.average_rate) if stream.average_rate else None
        if first.time is not None:
            start = float(first.time)
        end = _last_packet_end(container, stream)
        if end is not None:  # containers can under-report the duration of variable-rate streams
            duration = max(duration, end - start)
        return VideoMeta(str(path), max(duration, 0.0), start, int(stream.frames or 0), fps, rotation, w, h)
    finally:
        container.close()


def _last_packet_end(container: Any, stream: Any) -> float | None:
    """End time (seconds) of the last packet: seek to the last keyframe and demux (no decoding)."""
    if stream.time_base is None:
        return None
    try:
        container.seek(2**62, stream=stream, backward=True, any_frame=False)
        end = None
        for packet in container.demux(stream):
            if packet.pts is None:
                continue
            t = float((packet.pts + (packet.duration or 0)) * stream.time_base)
            end = t if end is None else max(end, t)
        return end
    except Exception as exc:  # noqa: BLE001 - a container that cannot seek keeps its reported duration
        log.debug("cannot find the end of %s by seeking: %s", container.name, exc)
        return None


def _to_image(frame: Any) -> "Image.Image":
    img = frame.to_image()  # RGB
    rotation = int(getattr(frame, "rotation", 0) or 0) % 360
    if rotation:
        img = img.rotate(rotation, expand=True)  # PIL rotates counter-clockwise, like the display matrix
    return img


def _frame_time(frame: Any, fallback: float) -> float:
    return float(frame.time) if frame.time is not None else fallback


def decode_all(path: str) -> list[Frame]:
    """Every frame of the video, in order (for short videos and for benchmarks)."""
    container = _open(path)
    frames: list[Frame] = []
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        rate = float(stream.average_rate) if stream.average_rate else 25.0
        for i, frame in enumerate(container.decode(stream)):
            frames.append(Frame(_frame_time(frame, i / rate), _to_image(frame), frame.pts, i))
    except VideoReadError:
        raise
    except Exception as exc:  # noqa: BLE001
        if not frames:
            raise _fail(path, exc) from None
        log.warning("%s: decoding stopped early after %d frames (%s)", path, len(frames), exc)
    finally:
        container.close()
    if not frames:
        raise VideoReadError(f"{path}: video has 0 decodable frames")
    start = frames[0].timestamp
    for f in frames:
        f.timestamp = round(f.timestamp - start, 6)
    return frames


def iter_frames(
    path: str,
    fps: float | None = None,
    stride: int | None = None,
    start: float = 0.0,
    end: float | None = None,
    max_frames: int | None = None,
) -> Iterator[Frame]:
    """Stream decoded frames of ``path`` one at a time (the file is never held in memory whole).

    Times are seconds from the video's first frame. ``start`` / ``end``: the time range kept
    (``start`` is reached by seeking to the keyframe before it; ``end`` exclusive, ``None`` = to the
    end). Sampling: ``fps`` keeps the first frame at or after each tick ``start + k / fps`` (half a
    source frame of tolerance; a tick between frames takes the next frame, so an ``fps`` above the
    video's rate gives every frame once); ``stride`` keeps every ``stride``-th decoded frame of the
    range; neither keeps every frame; both is an error. ``max_frames``: stop after that many. With
    ``fps`` ticks more than ``SEEK_THRESHOLD_S`` apart are reached by seeking to the keyframe before
    them (the same frames come out), until a seek lands no further than the previous frame
    (keyframes further apart than the ticks), after which decoding goes on frame by frame.

    Each ``Frame`` has ``timestamp`` (seconds from the first frame, rounded to microseconds),
    ``image`` (RGB, rotated for display), ``pts`` and ``index``: the frame's 0-based index in the
    video, ``round(timestamp * rate)`` with the stream's average rate (decode order when the rate is
    unknown). Raises ``VideoReadError`` for an unreadable video, ``ValueError`` for bad arguments.
    """
    if fps is not None and stride is not None:
        raise ValueError("give fps or stride, not both")
    if fps is not None and (not math.isfinite(fps) or fps <= 0):
        raise ValueError(f"fps must be a positive number, got {fps}")
    if stride is not None and stride < 1:
        raise ValueError(f"stride must be at least 1, got {stride}")
    if not math.isfinite(start) or start < 0:
        raise ValueError(f"start must be a non-negative number of seconds, got {start}")
    if end is not None and (not math.isfinite(end) or end <= start):
        raise ValueError(f"end must be a number of seconds after start ({start}), got {end}")
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames must be at least 1, got {max_frames}")
    return _iter_frames(path, fps, stride, start, end, max_frames)


def _iter_frames(
    path: str, fps: float | None, stride: int | None, start: float, end: float | None, max_frames: int | None
) -> Iterator[Frame]:
    origin = probe(path).start  # stream seconds of the first frame
    container = _open(path)
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        tb = stream.time_base
        rate = float(stream.average_rate) if stream.average_rate else None
        step = 1 / rate if rate else 0.04
        tol = step / 2
        if start > 0:
            target = origin + start
            offset = int(target / float(tb)) if tb else int(target * 1_000_000)
            container.seek(max(offset, 0), stream=stream if tb else None, backward=True, any_frame=False)
        next_tick = start
        kept = 0
        in_range = 0
        last_t: float | None = None
        decoded = 0
        seek_ok = bool(fps is not None and tb is not None and rate)
        seeked_from: float | None = None  # where the last seek was made from (seconds)
        frames = container.decode(stream)
        while True:
            try:
                frame = next(frames, None)
            except Exception as exc:  # noqa: BLE001 - a damaged tail: keep what was decoded
                if kept == 0 and decoded == 0:
                    raise _fail(path, exc) from None
                log.warning("%s: decoding stopped early after %d frames (%s)", path, decoded, exc)
                break
            if frame is None:
                break
            decoded += 1
            fallback = (last_t + step) if last_t is not None else origin + start
            t_abs = _frame_time(frame, fallback)
            last_t = t_abs
            t = round(t_abs - origin, 6)
            if seeked_from is not None:
                if t <= seeked_from + 1e-6:  # keyframes are further apart than the ticks: decode on
                    seek_ok = False
                seeked_from = None
            if t < start - 1e-6:
                continue
            if end is not None and t >= end - 1e-9:
                break
            in_range += 1
            if stride is not None and (in_range - 1) % stride:
                continue
            if fps is not None:
                if t < next_tick - tol:
                    continue
                while next_tick <= t + tol:
                    next_tick += 1 / fps
            index = int(round(t * rate)) if rate else decoded - 1
            yield Frame(t, _to_image(frame), frame.pts, index)
            kept += 1
            if max_frames is not None and kept >= max_frames:
                break
            if seek_ok and next_tick - t > SEEK_THRESHOLD_S:  # a sparse tick: seek to the keyframe before it
                target = origin + next_tick - tol
                container.seek(max(int(target / float(tb)), 0), stream=stream, backward=True, any_frame=False)
                frames = container.decode(stream)
                seeked_from, last_t = t, target - step
        if decoded == 0 and start == 0:
            raise VideoReadError(f"{path}: video has 0 decodable frames")
    finally:
        container.close()


def read_frames_at(path: str, times: list[float]) -> list[Frame]:
    """The frames shown at ``times`` (absolute stream seconds, ascending): the last frame whose
    presentation time is <= the target. Seeks to the keyframe before a target and decodes forward;
    a target within ``SEEK_THRESHOLD_S`` of the decoding position decodes on without seeking.
    Returns one ``Frame`` per target (the same frame may serve several targets); ``timestamp`` is
    absolute (stream seconds) here."""
    container = _open(path)
    out: list[Frame] = []
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"  # frame + slice threads (measured faster than one thread on 16 cores)
        tb = stream.time_base
        step = 1 / float(stream.average_rate) if stream.average_rate else 0.04
        frames_iter = None
        cur = None  # (frame, t): the last decoded frame at or before the previous target
        nxt = None  # (frame, t): a decoded frame after the previous target (look-ahead)
        for target in times:
            pos = nxt[1] if nxt is not None else (cur[1] if cur is not None else None)
            low = cur[1] if cur is not None else pos
            if frames_iter is None or pos is None or target < low or target - pos > SEEK_THRESHOLD_S:
                offset = int(target / float(tb)) if tb else int(target * 1_000_000)
                container.seek(max(offset, 0), stream=stream if tb else None, backward=True, any_frame=False)
                frames_iter = container.decode(stream)
                cur = nxt = None
            while True:
                if nxt is None:
                    frame = next(frames_iter, None)
                    if frame is None:
                        break  # end of stream: the last frame stays on screen
                    last_t = nxt[1] if nxt else (cur[1] if cur else target)
                    nxt = (frame, _frame_time(frame, last_t + step))
                if nxt[1] <= target + 1e-6:
                    cur, nxt = nxt, None
                    continue
                break
            chosen = cur if cur is not None else nxt  # nxt: the seek landed after the target
            if chosen is None:
                raise VideoReadError(f"{path}: no frame could be decoded near {target:.3f} s")
            out.append(Frame(chosen[1], _to_image(chosen[0]), chosen[0].pts))
    except VideoReadError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise _fail(path, exc) from None
    finally:
        container.close()
    return out


def sample_frames(path: str, n: int = 8) -> tuple[VideoMeta, list[Frame]]:
    """``n`` frames sampled uniformly over the duration (see the module docstring). Timestamps are
    seconds from the video's first frame, strictly increasing; fewer than ``n`` frames come back
    only when the video has fewer distinct frames."""
    if n < 1 or n > MAX_FRAMES:
        raise ValueError(f"frames must be between 1 and {MAX_FRAMES}, got {n}")
    meta = probe(path)
    short = meta.frames and meta.frames <= n
    if short or meta.duration <= 0:
        frames = decode_all(path)
        if len(frames) > n:
            picks = [min(int((i + 0.5) * len(frames) / n), len(frames) - 1) for i in range(n)]
            frames = [frames[i] for i in picks]
        return meta, frames
    targets = uniform_timestamps(meta.duration, n, meta.start)
    raw = read_frames_at(path, targets)
    frames: list[Frame] = []
    seen: set[Any] = set()
    for f in raw:
        key = f.pts if f.pts is not None else round(f.timestamp, 6)
        if key in seen:
            continue
        seen.add(key)
        f.timestamp = round(max(f.timestamp - meta.start, 0.0), 6)
        frames.append(f)
    return meta, frames


# -- Video-LLaVA -----------------------------------------------------------------------------
@dataclass
class VideoLlavaBundle:
    """``model``: VideoLlavaForConditionalGeneration; ``processor``: VideoLlavaProcessor."""

    model: Any
    processor: Any
    device: str
    num_frames: int = 8
    max_new_tokens: int = 64

    def answer(self, frames: list["Image.Image"], question: str) -> str:
        import torch

        text = PROMPT.format(question=question)
        inputs = self.processor(text=text, videos=[frames], return_tensors="pt")
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        if "pixel_values_videos" in inputs:
            inputs["pixel_values_videos"] = inputs["pixel_values_videos"].to(self.model.dtype)
        with torch.inference_mode():
            out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        new = out[:, inputs["input_ids"].shape[1] :]
        return self.processor.batch_decode(new, skip_special_tokens=True)[0].strip()


@register_loader(FAMILY, "transformers")
def load_video_llava(checkpoint: str, device: str, dtype: Any, options: dict[str, Any]) -> VideoLlavaBundle:
    """Video-LLaVA from a Hub id or local folder; the architecture comes from its ``config.json``."""
    from transformers import AutoConfig, VideoLlavaForConditionalGeneration, VideoLlavaProcessor

    config = AutoConfig.from_pretrained(checkpoint)
    if config.model_type != "video_llava":
        raise ToolError(
            f"checkpoint {checkpoint} is a '{config.model_type}' model; the video tool needs Video-LLaVA (video_llava)"
        )
    model = VideoLlavaForConditionalGeneration.from_pretrained(checkpoint, dtype=dtype).to(device).eval()
    processor = VideoLlavaProcessor.from_pretrained(checkpoint)
    return VideoLlavaBundle(
        model, processor, device,
        num_frames=int(options.get("num_frames", 8)), max_new_tokens=int(options.get("max_new_tokens", 64)),
    )  # fmt: skip


# -- tools -----------------------------------------------------------------------------------
class VideoFramesInput(ToolInput):
    video: str = Field(description="video id, e.g. vid_0")
    frames: int = Field(default=8, ge=1, le=MAX_FRAMES, description="number of frames sampled uniformly")


class FrameRef(BaseModel):
    """A frame registered as an image: ``image`` its new id, ``timestamp`` seconds from the start."""

    image: str
    timestamp: float


class VideoFramesOutput(ToolOutput):
    video: str
    duration: float
    frames: list[FrameRef]

    def observation(self) -> str:
        listed = ", ".join(f"{f.image} @ {f.timestamp:.2f}s" for f in self.frames)
        return clip_text(
            f"{len(self.frames)} frames of {self.video} ({self.duration:.1f} s) registered as images: {listed}"
        )


def _register(ctx: Any, video_id: str, frames: list[Frame]) -> list[FrameRef]:
    refs = []
    for i, frame in enumerate(frames):
        image_id = ctx.add_image(frame.image, f"{video_id}@{frame.timestamp:.3f}s", timestamp=frame.timestamp, parent=video_id)
        refs.append(FrameRef(image=image_id, timestamp=frame.timestamp))
        ctx.progress("registering frames", i + 1, len(frames))
    return refs


def video_path(ctx: Any, video_id: str) -> str:
    """The file of video ``video_id``; an unknown id or an image id is a ``ToolError`` naming it."""
    try:
        return ctx.video_path(video_id)
    except ToolError:
        raise
    except Exception as exc:  # noqa: BLE001 - MediaError for an unknown id or an image id
        raise ToolError(str(exc)) from None


class VideoFrames(Tool):
    name = "video_frames"
    description = (
        "Sample frames uniformly over a video and register them as images (img_k, with timestamps) so "
        "detect, count, segment, caption or vqa can run on each frame."
    )

    def run(self, input: VideoFramesInput, ctx: Any) -> VideoFramesOutput:  # noqa: A002
        meta, frames = sample_frames(video_path(ctx, input.video), input.frames)
        return VideoFramesOutput(video=input.video, duration=round(meta.duration, 3), frames=_register(ctx, input.video, frames))

    @classmethod
    def replay_effects(cls, input: VideoFramesInput, output: VideoFramesOutput, ctx: Any) -> VideoFramesOutput:  # noqa: A002
        """Sample the (sha256-checked) video again and register the same frames as images, so that
        later calls and re-planning see their pixels; frames at other times are an error."""
        _, frames = sample_frames(video_path(ctx, input.video), input.frames)
        now = [round(f.timestamp, 3) for f in frames]
        recorded = [round(f.timestamp, 3) for f in output.frames]
        if now != recorded:
            raise ToolError(f"the frames of {input.video} sampled now (at {now} s) differ from the recorded ones (at {recorded} s)")
        return output.model_copy(update={"frames": _register(ctx, input.video, frames)})


class VideoQAInput(ToolInput):
    video: str = Field(description="video id, e.g. vid_0")
    question: str = Field(min_length=1, description="question about the video")
    frames: int = Field(default=8, ge=1, le=MAX_FRAMES, description="number of frames sampled uniformly")


class VideoQAOutput(ToolOutput):
    """``timestamps``: seconds (from the start) of the distinct frames the model saw."""

    video: str
    question: str
    answer: str
    timestamps: list[float]
    frames_fed: int

    def observation(self) -> str:
        ts = ", ".join(f"{t:.2f}" for t in self.timestamps)
        rep = f" (repeated to {self.frames_fed})" if self.frames_fed != len(self.timestamps) else ""
        return clip_text(f"{self.video}: {self.answer!r} (frames at {ts} s{rep})")


class VideoQA(Tool):
    name = "video_qa"
    description = "Answer a question about a video with Video-LLaVA over frames sampled uniformly over its duration."
    families = (FAMILY,)

    def run(self, input: VideoQAInput, ctx: Any) -> VideoQAOutput:  # noqa: A002
        if not input.question.strip():
            raise ToolError("question is empty")
        path = video_path(ctx, input.video)
        _, frames = sample_frames(path, input.frames)
        images = [f.image for f in frames]
        if len(images) < input.frames:  # repeat in order, like np.linspace indices on a short clip
            images = [images[min(int(i * len(images) / input.frames), len(images) - 1)] for i in range(input.frames)]
        with ctx.model(FAMILY) as bundle:
            answer = bundle.answer(images, input.question)
        return VideoQAOutput(
            video=input.video, question=input.question, answer=answer,
            timestamps=[f.timestamp for f in frames], frames_fed=len(images),
        )  # fmt: skip
