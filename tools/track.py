"""``track``: objects followed over the frames of a video, each counted once.

Pipeline: frames are streamed from the video (``visagent.tools.video.iter_frames``: a time range
``start`` / ``end``, sampled by ``fps`` or ``stride``, never decoded whole), detected in batches of
``BATCH_FRAMES`` with the ``detect`` family's model (the same backends and thresholds as
``detect``; one ``detect_many`` call per batch, the model held only for that call),
de-duplicated per label with non-maximum suppression (``nms_iou``), and associated over time by ByteTrack from the ``trackers``
package (``trackers.ByteTrackTracker``, one tracker per label, fed ``supervision.Detections`` with
the frames' timestamps). A new track starts only from a detection scoring at least
``track_threshold``; lower-scoring detections (down to ``box_threshold``) only continue tracks
(ByteTrack's second association stage); a track unseen for ``lost_seconds`` ends.

Counting: a track is *confirmed* when it has at least ``min_track_length`` sightings; only
confirmed tracks are counted, returned and given ids. Shorter ones (flickering false positives, the
cause of tenfold inflated counts when every tracker id is counted) are dropped and their number is
reported per label. The tracker library confirms a track at its second consecutive sighting (it
gives the spawning detection no id); that first sighting is put back at the head of the track: the
unassigned detection of the frame before, able to start a track, that overlaps the track's second
box most (a track just spawned is predicted where it was seen, so it matched by that overlap).

Tracks are regions (``TrackRegion``, id ``trk_<n>_<i>``, ordered by first sighting): ``image`` is
the video id, ``box`` the box at first sight, ``points`` the sightings (``TrackPoint``: time in
seconds from the start of the video, frame index, box [x0, y0, x1, y1] frame pixels, score).

Frame budget: at most ``max_frames`` frames (default ``DEFAULT_MAX_FRAMES``, at most
``MAX_FRAMES``). A call that gives neither ``fps`` nor ``stride`` takes every frame of the range, or
samples down evenly by time to fit the budget (said in the observation); a call whose own sampling
would exceed it is an error naming the fix.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field, field_validator, model_validator

from visagent.errors import ToolError
from visagent.tools.base import Box, Prob, Region, Tool, ToolInput, ToolOutput, clip_text
from visagent.tools.detect import DEFAULT_TEXT_THRESHOLD, DetectRequest, RawDetection, _check_labels, nms_keep
from visagent.tools.detect import FAMILY as DETECT_FAMILY
from visagent.tools.video import iter_frames, probe, video_path

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

log = logging.getLogger(__name__)

DEFAULT_MAX_FRAMES = 300
MAX_FRAMES = 1800
#: frames detected per model call
BATCH_FRAMES = 8
DEFAULT_BOX_THRESHOLD = 0.3
DEFAULT_TRACK_THRESHOLD = 0.4
DEFAULT_MATCH_IOU = 0.1
DEFAULT_LOST_SECONDS = 1.0
DEFAULT_MIN_TRACK_LENGTH = 3
#: the tracker library's lost-track buffer is counted in frames of a 30 fps video
_LIBRARY_REFERENCE_FPS = 30.0


class TrackPoint(BaseModel):
    """One sighting: ``time`` seconds from the start of the video; ``frame`` the 0-based index of
    the frame in the video; ``box`` [x0, y0, x1, y1] pixels of the frame; ``score`` the detector's."""

    time: float
    frame: int
    box: Box
    score: float


class TrackRegion(Region):
    """A tracked object: id ``trk_<n>_<i>``; ``image`` the video id (``vid_0``); ``box`` the box at
    first sight; ``label``; ``points`` its sightings in time order; ``first_seen`` / ``last_seen``
    seconds; ``mean_score`` the mean detector score over ``points``."""

    points: list[TrackPoint]
    first_seen: float
    last_seen: float
    mean_score: float

    def describe(self) -> str:
        return (
            f"{self.id} {self.label!r} {self.first_seen:.2f}-{self.last_seen:.2f} s, "
            f"{len(self.points)} boxes, mean score {self.mean_score:.2f}"
        )

    def box_at(self, time: float) -> Box | None:
        """The box of the sighting nearest to ``time`` (seconds) within the track's span, else None."""
        if not self.points or time < self.first_seen - 1e-6 or time > self.last_seen + 1e-6:
            return None
        return min(self.points, key=lambda p: abs(p.time - time)).box


# -- association (the tracker library) ---------------------------------------------------------
@dataclass
class TrackerSettings:
    """ByteTrack settings: ``track_threshold`` (a new track needs a detection scoring at least this),
    ``match_iou`` (IoU a detection needs with a track's predicted box to continue it),
    ``lost_seconds`` (a track unseen this long ends; at least 1.5 sampled frame intervals),
    ``frame_rate`` (frames per second fed)."""

    track_threshold: float = DEFAULT_TRACK_THRESHOLD
    match_iou: float = DEFAULT_MATCH_IOU
    lost_seconds: float = DEFAULT_LOST_SECONDS
    frame_rate: float = 30.0


@dataclass
class RawTrack:
    """A track before ids: its ``label`` and sightings in time order."""

    label: str
    points: list[TrackPoint] = field(default_factory=list)


def _library() -> Any:
    try:
        import trackers
    except ImportError:
        raise ToolError("the track tool needs the trackers package: pip install 'visagent[track]'") from None
    return trackers


def tracker_name() -> str:
    """``"ByteTrack (trackers 2.6.1)"``."""
    try:
        return f"ByteTrack (trackers {version('trackers')})"
    except PackageNotFoundError:  # pragma: no cover - the import above fails first
        return "ByteTrack (trackers)"


class Associator:
    """Links per-frame detections into tracks with ``trackers.ByteTrackTracker``, one tracker per
    label. ``update(time, frame, detections)`` once per frame in time order (frames with no
    detection included: they age the tracks); ``tracks()`` then gives every track, confirmed or not."""

    def __init__(self, labels: Sequence[str], settings: TrackerSettings) -> None:
        lib = _library()
        self.settings = settings
        #: a track survives at least the gap to the next sampled frame (and a half)
        self.lost_seconds = max(settings.lost_seconds, 1.5 / settings.frame_rate)
        self._trackers = {
            label: lib.ByteTrackTracker(
                lost_track_buffer=max(1, round(self.lost_seconds * _LIBRARY_REFERENCE_FPS)),
                frame_rate=float(settings.frame_rate),
                track_activation_threshold=float(settings.track_threshold),
                minimum_consecutive_frames=2,  # an id at the second consecutive sighting (see the module docstring)
                minimum_iou_threshold=float(settings.match_iou),
                high_conf_det_threshold=float(settings.track_threshold),
            )
            for label in labels
        }
        self._tracks: dict[tuple[str, int], RawTrack] = {}
        self._spawns: dict[str, list[TrackPoint]] = {label: [] for label in labels}
        self._last_time: float | None = None

    def update(self, time: float, frame: int, detections: Iterable[RawDetection]) -> None:
        import numpy as np
        import supervision as sv

        if self._last_time is not None and time <= self._last_time:
            raise ValueError(f"frames must come in time order: {time} s after {self._last_time} s")
        self._last_time = time
        by_label: dict[str, list[RawDetection]] = {label: [] for label in self._trackers}
        for d in detections:
            if d.label in by_label:
                by_label[d.label].append(d)
        for label, tracker in self._trackers.items():
            found = by_label[label]
            if found:
                dets = sv.Detections(
                    xyxy=np.array([d.box for d in found], dtype=np.float32).reshape(-1, 4),
                    confidence=np.array([d.score for d in found], dtype=np.float32),
                )
            else:
                dets = sv.Detections.empty()
                dets.confidence = np.zeros((0,), dtype=np.float32)
            result = tracker.update(dets, timestamp=float(time))
            if result.tracker_id is None:
                continue
            scores = result.confidence if result.confidence is not None else np.ones(len(result))
            spawns: list[TrackPoint] = []
            born: list[RawTrack] = []
            for box, score, tid in zip(result.xyxy.tolist(), scores.tolist(), result.tracker_id.tolist()):
                point = TrackPoint(time=round(time, 6), frame=frame, box=[round(v, 2) for v in box], score=round(float(score), 4))
                if tid < 0:  # not (yet) in a confirmed track: it may have started one
                    if score >= self.settings.track_threshold:
                        spawns.append(point)
                    continue
                key = (label, int(tid))
                if key not in self._tracks:
                    born.append(self._tracks.setdefault(key, RawTrack(label)))
                self._tracks[key].points.append(point)
            _prepend_spawns(born, self._spawns[label])
            self._spawns[label] = spawns

    def tracks(self) -> list[RawTrack]:
        """Every track, ordered by first sighting (then label)."""
        return sorted(self._tracks.values(), key=lambda t: (t.points[0].time, t.label, t.points[0].box))


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two [x0, y0, x1, y1] boxes."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _prepend_spawns(born: list[RawTrack], spawns: list[TrackPoint]) -> None:
    """Give each track confirmed this frame its first sighting: the previous frame's unassigned
    detection overlapping its box most (pairs taken best first, each used once)."""
    pairs = sorted(
        ((box_iou(t.points[0].box, p.box), i, j) for i, t in enumerate(born) for j, p in enumerate(spawns)),
        reverse=True,
    )
    used_t: set[int] = set()
    used_p: set[int] = set()
    for iou, i, j in pairs:
        if iou <= 0 or i in used_t or j in used_p:
            continue
        used_t.add(i)
        used_p.add(j)
        born[i].points.insert(0, spawns[j])


def confirmed(tracks: Sequence[RawTrack], min_track_length: int) -> tuple[list[RawTrack], list[RawTrack]]:
    """``(confirmed, dropped)``: tracks with at least ``min_track_length`` sightings, and the rest."""
    keep = [t for t in tracks if len(t.points) >= min_track_length]
    drop = [t for t in tracks if len(t.points) < min_track_length]
    return keep, drop


def distinct_counts(tracks: Sequence[RawTrack], labels: Sequence[str], min_track_length: int) -> dict[str, int]:
    """Distinct objects per label: the confirmed tracks (see ``confirmed``) of each label."""
    keep, _ = confirmed(tracks, min_track_length)
    return {label: sum(1 for t in keep if t.label == label) for label in labels}


# -- input / output --------------------------------------------------------------------------
class TrackInput(ToolInput):
    """``video``: video id. ``labels``: object names to track (cleaned like ``detect``'s). Sampling:
    ``fps`` or ``stride`` (not both; neither = every frame, sampled down to fit ``max_frames``).
    ``start`` / ``end``: seconds from the start of the video (``end`` exclusive)."""

    video: str = Field(description="video id, e.g. vid_0")
    labels: list[str] = Field(description="object names to track, e.g. ['person']")
    fps: float | None = Field(
        default=None, gt=0, le=120, allow_inf_nan=False, description="frames per second to sample (default: every frame)"
    )
    stride: int | None = Field(default=None, ge=1, le=10_000, description="take every stride-th frame instead of fps")
    start: float = Field(default=0.0, ge=0, allow_inf_nan=False, description="start of the time range, seconds")
    end: float | None = Field(
        default=None, gt=0, allow_inf_nan=False, description="end of the time range, seconds (default: the end)"
    )
    max_frames: int = Field(default=DEFAULT_MAX_FRAMES, ge=1, le=MAX_FRAMES, description="most frames to detect on")
    box_threshold: Prob = Field(default=DEFAULT_BOX_THRESHOLD, description="minimum box score of a detection")
    text_threshold: Prob = Field(default=DEFAULT_TEXT_THRESHOLD, description="minimum label-token score")
    track_threshold: Prob = Field(
        default=DEFAULT_TRACK_THRESHOLD, description="minimum score of a detection that starts a new track"
    )
    match_iou: Prob = Field(default=DEFAULT_MATCH_IOU, description="minimum IoU to continue a track")
    lost_seconds: float = Field(
        default=DEFAULT_LOST_SECONDS, ge=0, le=60, allow_inf_nan=False, description="a track unseen this long ends"
    )
    min_track_length: int = Field(
        default=DEFAULT_MIN_TRACK_LENGTH, ge=1, le=MAX_FRAMES, description="sightings a track needs to be counted"
    )
    nms_iou: Prob = Field(default=0.5, description="IoU above which boxes of one frame count once")

    @field_validator("labels")
    @classmethod
    def _labels(cls, value: list[str]) -> list[str]:
        return _check_labels(value)

    @model_validator(mode="after")
    def _range(self) -> "TrackInput":
        if self.fps is not None and self.stride is not None:
            raise ValueError("give fps or stride, not both")
        if self.end is not None and self.end <= self.start:
            raise ValueError(f"end ({self.end} s) must be after start ({self.start} s)")
        return self


class TrackOutput(ToolOutput):
    """``counts``: distinct objects per label (confirmed tracks); ``count``: their sum; ``dropped``:
    tracks per label shorter than ``min_track_length`` (not counted, not returned); ``tracks``:
    the confirmed tracks. ``start`` / ``end``: the time range read (seconds); ``frames``: frames
    detected on; ``fps``: the sampling rate asked or chosen (None: every ``stride``-th frame);
    ``sampled_down``: the budget lowered the rate."""

    video: str
    labels: list[str]
    width: int
    height: int
    duration: float
    start: float
    end: float
    frames: int
    fps: float | None
    stride: int | None
    sampled_down: bool = False
    box_threshold: float
    text_threshold: float
    track_threshold: float
    match_iou: float
    lost_seconds: float
    min_track_length: int
    nms_iou: float
    tracker: str
    counts: dict[str, int]
    count: int
    dropped: dict[str, int]
    tracks: list[TrackRegion]

    def observation(self) -> str:
        rate = f"{self.fps:g} fps" if self.fps is not None else f"every {self.stride or 1} frame(s)"
        down = " (sampled down to fit max_frames)" if self.sampled_down else ""
        counts = ", ".join(f"{n} {label!r}" for label, n in self.counts.items())
        dropped = sum(self.dropped.values())
        head = (
            f"tracked {', '.join(repr(lb) for lb in self.labels)} in {self.video} over {self.start:.2f}-{self.end:.2f} s "
            f"({self.frames} frames at {rate}{down}): distinct {counts} (tracks of at least {self.min_track_length} sightings); "
            f"{dropped} shorter track{'s' if dropped != 1 else ''} not counted; settings: box_threshold {self.box_threshold:g}, "
            f"text_threshold {self.text_threshold:g}, track_threshold {self.track_threshold:g}, match_iou {self.match_iou:g}, "
            f"lost_seconds {self.lost_seconds:g}, nms_iou {self.nms_iou:g}, {self.tracker}"
        )
        listed = "; ".join(t.describe() for t in self.tracks)
        return clip_text(head + (": " + listed if listed else ""))


# -- the tool ----------------------------------------------------------------------------------
@dataclass
class Plan:
    """How a call samples: the range (seconds), ``fps`` / ``stride`` for ``iter_frames``, the
    expected frame count, the frame rate fed to the tracker and whether the budget lowered it."""

    start: float
    end: float
    fps: float | None
    stride: int | None
    expected: int
    rate: float
    sampled_down: bool


def plan_sampling(duration: float, source_fps: float | None, frames: int, inp: TrackInput) -> Plan:
    """The sampling of ``inp`` over a video of ``duration`` s (rate ``source_fps``, ``frames``
    frames when known), within ``inp.max_frames`` (see the module docstring)."""
    end = duration if inp.end is None else min(inp.end, duration)
    if inp.start >= duration:
        raise ToolError(f"start ({inp.start:g} s) is at or past the end of the video ({duration:.2f} s)")
    span = max(end - inp.start, 1e-6)
    rate = source_fps or (frames / duration if frames and duration > 0 else 25.0)
    if inp.fps is not None:
        eff = min(inp.fps, rate)
    elif inp.stride is not None:
        eff = rate / inp.stride
    else:
        eff = rate
    expected = max(1, math.ceil(span * eff - 1e-6))
    if expected <= inp.max_frames:
        return Plan(inp.start, end, inp.fps, inp.stride, expected, eff, False)
    if inp.fps is None and inp.stride is None:
        fps = inp.max_frames / span
        return Plan(inp.start, end, fps, None, inp.max_frames, fps, True)
    raise ToolError(
        f"tracking {span:.1f} s at {eff:.3g} frames per second needs about {expected} frames, more than max_frames "
        f"({inp.max_frames}): lower fps, raise stride, narrow start/end, or raise max_frames (at most {MAX_FRAMES})"
    )


def _detect_batch(
    bundle: Any, images: list["Image.Image"], labels: list[str], box_threshold: float, text_threshold: float
) -> list[list[RawDetection]]:
    """Detections per image, in one batched ``detect_many`` call (one ``detect`` per image for a
    backend without it)."""
    many = getattr(bundle, "detect_many", None)
    if many is None:
        return [bundle.detect(image, labels, box_threshold, text_threshold) for image in images]
    return list(many([DetectRequest(image, labels, box_threshold, text_threshold) for image in images]))


def build_regions(ctx: Any, video_id: str, tracks: Sequence[RawTrack]) -> list[TrackRegion]:
    """Tracks -> ``TrackRegion`` with ids ``trk_<call>_<i>`` in order."""
    out = []
    for i, t in enumerate(tracks):
        out.append(
            TrackRegion(
                id=ctx.region_id("trk", i),
                image=video_id,
                box=list(t.points[0].box),
                label=t.label,
                score=round(sum(p.score for p in t.points) / len(t.points), 4),
                points=list(t.points),
                first_seen=t.points[0].time,
                last_seen=t.points[-1].time,
                mean_score=round(sum(p.score for p in t.points) / len(t.points), 4),
            )  # fmt: skip
        )
    return out


class Track(Tool):
    name = "track"
    description = (
        "Follow objects named by text labels over a video's frames and count each object once: returns tracks "
        "(trk_N_i) with boxes over time and the number of distinct objects per label. Use it for 'how many ... "
        "passed / different / in total' questions about a video."
    )
    families = (DETECT_FAMILY,)
    region_prefixes = ("trk",)

    def run(self, inp: TrackInput, ctx: Any) -> TrackOutput:  # noqa: D102
        path = video_path(ctx, inp.video)
        meta = probe(path)
        plan = plan_sampling(meta.duration, meta.fps, meta.frames, inp)
        settings = TrackerSettings(inp.track_threshold, inp.match_iou, inp.lost_seconds, plan.rate)
        assoc = Associator(inp.labels, settings)
        frames = iter_frames(path, fps=plan.fps, stride=plan.stride, start=plan.start, end=inp.end, max_frames=inp.max_frames)
        done = 0
        width, height = meta.width, meta.height
        batch: list[Any] = []
        for frame in _with_end(frames):
            if frame is not None:
                batch.append(frame)
            if batch and (frame is None or len(batch) >= BATCH_FRAMES):
                with ctx.model(DETECT_FAMILY) as bundle:  # held per batch: other calls may use the model between
                    found = _detect_batch(bundle, [f.image for f in batch], inp.labels, inp.box_threshold, inp.text_threshold)
                for f, dets in zip(batch, found):
                    width, height = f.image.size
                    kept = [d for label in inp.labels for d in nms_keep([x for x in dets if x.label == label], inp.nms_iou)]
                    assoc.update(f.timestamp, f.index, kept)
                done += len(batch)
                batch = []
                ctx.progress("tracking frames", done, max(done, plan.expected))
        if done == 0:
            raise ToolError(f"no frame of {inp.video} lies in {plan.start:g}-{plan.end:g} s")
        keep, drop = confirmed(assoc.tracks(), inp.min_track_length)
        tracks = build_regions(ctx, inp.video, keep)
        counts = {label: sum(1 for t in keep if t.label == label) for label in inp.labels}
        return TrackOutput(
            video=inp.video, labels=inp.labels, width=width, height=height, duration=round(meta.duration, 3),
            start=round(plan.start, 3), end=round(plan.end, 3), frames=done,
            fps=None if plan.fps is None else round(plan.fps, 4), stride=plan.stride, sampled_down=plan.sampled_down,
            box_threshold=inp.box_threshold, text_threshold=inp.text_threshold, track_threshold=inp.track_threshold,
            match_iou=inp.match_iou, lost_seconds=inp.lost_seconds, min_track_length=inp.min_track_length,
            nms_iou=inp.nms_iou, tracker=tracker_name(), counts=counts, count=sum(counts.values()),
            dropped={label: sum(1 for t in drop if t.label == label) for label in inp.labels}, tracks=tracks,
        )  # fmt: skip


def _with_end(items: Iterable[Any]) -> Iterable[Any]:
    """``items`` then one ``None`` (so a loop can flush what it gathered)."""
    yield from items
    yield None
