"""``track``: generated scenes of moving squares with known ground truth (crossing paths,
occlusion, leaving and re-entering, flickering false positives) fed to the real tracker library
(``trackers.ByteTrackTracker`` through ``visagent.tools.track.Associator``) give the known distinct
counts; the frame iterator streams by time; the whole tool runs on the tiny detector through the
agent with a scripted plan (structure only: the tiny detector's boxes are random)."""

from __future__ import annotations

import random
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from tests.helpers import frame_index, tool_steps, write_video
from visagent.errors import ToolError
from visagent.tools.detect import RawDetection
from visagent.tools.track import (
    Associator,
    TrackerSettings,
    TrackInput,
    TrackOutput,
    TrackRegion,
    confirmed,
    distinct_counts,
    plan_sampling,
)
from visagent.tools.video import iter_frames

W, H, FPS = 160, 120, 10
SIDE = 16


# -- generated scenes with ground truth ---------------------------------------------------------
@dataclass
class Mover:
    """A square of ``SIDE`` pixels whose top-left corner is ``at(t)`` (None: not in the scene)."""

    name: str
    color: tuple[int, int, int]
    at: Callable[[float], "tuple[float, float] | None"]


@dataclass
class Scene:
    movers: list[Mover]
    seconds: float
    #: x range [x0, x1) of a pillar in front of everything (None: no pillar)
    pillar: tuple[int, int] | None = None

    def times(self) -> list[float]:
        return [k / FPS for k in range(round(self.seconds * FPS))]

    def visible(self, t: float) -> list[tuple[str, list[float]]]:
        """Ground truth at ``t``: (name, box) of every square at least half inside the frame and
        at least half uncovered by the pillar."""
        out = []
        for m in self.movers:
            pos = m.at(t)
            if pos is None:
                continue
            x0, y0 = pos
            box = [x0, y0, x0 + SIDE, y0 + SIDE]
            inside = max(0.0, min(box[2], W) - max(box[0], 0))
            hidden = max(0.0, min(box[2], self.pillar[1]) - max(box[0], self.pillar[0])) if self.pillar else 0.0
            if inside >= SIDE / 2 and inside - hidden >= SIDE / 2:
                out.append((m.name, [max(box[0], 0.0), box[1], min(box[2], float(W)), box[3]]))
        return out

    def write(self, path: Path) -> Path:
        """The scene as an H.264 video (``FPS`` frames per second)."""
        import av

        with av.open(str(path), "w") as container:
            stream = container.add_stream("libx264", rate=FPS)
            stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
            stream.codec_context.time_base = Fraction(1, 1000)
            for t in self.times():
                a = np.full((H, W, 3), 128, np.uint8)
                for m in self.movers:
                    pos = m.at(t)
                    if pos is not None:
                        x0, y0 = int(round(pos[0])), int(round(pos[1]))
                        a[max(y0, 0) : max(y0 + SIDE, 0), max(x0, 0) : max(x0 + SIDE, 0)] = m.color
                if self.pillar:
                    a[:, self.pillar[0] : self.pillar[1]] = (60, 60, 60)
                frame = av.VideoFrame.from_ndarray(a, format="rgb24")
                frame.pts, frame.time_base = int(round(t * 1000)), Fraction(1, 1000)
                for packet in stream.encode(frame):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        return path


def _line(x0: float, x1: float, y: float, t0: float, t1: float) -> Callable[[float], "tuple[float, float] | None"]:
    """Moving from x0 to x1 at height y between t0 and t1 (absent outside)."""

    def at(t: float) -> "tuple[float, float] | None":
        if t < t0 - 1e-9 or t > t1 + 1e-9:
            return None
        return (x0 + (x1 - x0) * (t - t0) / (t1 - t0), y)

    return at


RED, BLUE = (220, 30, 30), (30, 60, 220)
CROSSING = Scene([Mover("a", RED, _line(0, W - SIDE, 50, 0, 3)), Mover("b", BLUE, _line(W - SIDE, 0, 54, 0, 3))], 3.0)
OCCLUSION = Scene([Mover("a", RED, _line(0, W - SIDE, 50, 0, 3))], 3.0, pillar=(70, 90))
# leaves on the right at 1.5 s, comes back from the right at 3.0 s; b stays in view all along
REENTRY = Scene(
    [
        Mover("a", RED, lambda t: (t * 100.0, 20.0) if t <= 1.5 else ((W + 140 - (t - 1.5) * 100.0, 20.0) if t >= 1.5 else None)),
        Mover("b", BLUE, _line(10, 60, 80, 0, 4)),
    ],
    4.0,
)


def gt_detections(
    scene: Scene, *, noise: int = 0, seed: int = 0, flicker: int = 0
) -> list[tuple[float, int, list[RawDetection]]]:
    """Per frame: (time, frame index, detections) made from the ground truth, with ``noise`` px of
    box jitter and ``flicker`` false positives that each last two frames at one place."""
    rng = random.Random(seed)
    ghosts = {}  # first frame -> box
    n = len(scene.times())
    for _ in range(flicker):
        k = rng.randrange(0, n - 1)
        x, y = rng.uniform(0, W - SIDE), rng.uniform(0, H - SIDE)
        ghosts.setdefault(k, []).append([x, y, x + SIDE, y + SIDE])
    out = []
    for k, t in enumerate(scene.times()):
        dets = []
        for _, box in scene.visible(t):
            j = [rng.uniform(-noise, noise) for _ in range(4)] if noise else [0.0] * 4
            dets.append(RawDetection("square", [b + d for b, d in zip(box, j)], rng.uniform(0.7, 0.95)))
        for box in ghosts.get(k, []) + ghosts.get(k - 1, []):
            dets.append(RawDetection("square", list(box), 0.9))
        out.append((t, k, dets))
    return out


def _associate(frames: list[tuple[float, int, list[RawDetection]]], **settings: float) -> Associator:
    assoc = Associator(["square"], TrackerSettings(frame_rate=FPS, **settings))
    for t, k, dets in frames:
        assoc.update(t, k, dets)
    return assoc


def test_crossing_paths_count_two_and_keep_every_sighting() -> None:
    frames = gt_detections(CROSSING, noise=1, seed=1)
    tracks = _associate(frames).tracks()
    assert distinct_counts(tracks, ["square"], 3) == {"square": 2}
    sightings = sum(len(d) for _, _, d in frames)
    assert sum(len(t.points) for t in tracks) == sightings  # the first sighting of each track included
    for t in tracks:
        assert [p.time for p in t.points] == sorted(p.time for p in t.points)
        assert t.points[0].time == 0.0 and t.points[-1].time == pytest.approx(CROSSING.times()[-1])
    # through the crossing each track keeps its square: its boxes stay on one line (y 50 or 54)
    for t in tracks:
        assert len({round(p.box[1]) // 2 for p in t.points}) <= 2


def test_occlusion_shorter_than_lost_seconds_is_one_track() -> None:
    frames = gt_detections(OCCLUSION)
    hidden = [t for t, _, d in frames if not d and 0 < t < 3]
    assert 0 < len(hidden) * (1 / FPS) < 1.0  # the pillar hides the square for a while, under a second
    assert distinct_counts(_associate(frames, lost_seconds=1.0).tracks(), ["square"], 3) == {"square": 1}
    # a tracker that forgets a track sooner counts the square again after the pillar
    assert distinct_counts(_associate(frames, lost_seconds=0.2).tracks(), ["square"], 3) == {"square": 2}


def test_leaving_and_reentering_after_lost_seconds_is_a_new_track() -> None:
    frames = gt_detections(REENTRY)
    gone = [t for t, _, d in frames if len(d) == 1]
    assert max(gone) - min(gone) > 1.0  # a is away for longer than lost_seconds
    tracks = _associate(frames, lost_seconds=1.0).tracks()
    assert distinct_counts(tracks, ["square"], 3) == {"square": 3}  # a's two visits and b
    a_seen = [t for t, _, d in frames if any(x.box[1] == 20.0 for x in d)]  # a's boxes are at y = 20
    visits = [sum(1 for t in a_seen if t < 2), sum(1 for t in a_seen if t > 2)]
    assert sorted(len(t.points) for t in tracks) == sorted([*visits, len(frames)])


def test_unconfirmed_tracks_are_never_counted() -> None:
    clean = gt_detections(CROSSING, noise=1, seed=2)
    noisy = gt_detections(CROSSING, noise=1, seed=2, flicker=6)
    tracks = _associate(noisy).tracks()
    keep, drop = confirmed(tracks, 3)
    assert distinct_counts(tracks, ["square"], 3) == distinct_counts(_associate(clean).tracks(), ["square"], 3) == {"square": 2}
    assert len(drop) >= 4 and all(len(t.points) == 2 for t in drop)  # the two-frame flickers
    # counting every tracker id would inflate the count several times over
    assert distinct_counts(tracks, ["square"], 1)["square"] >= 3 * 2


def test_frames_must_come_in_time_order() -> None:
    assoc = Associator(["square"], TrackerSettings(frame_rate=FPS))
    assoc.update(1.0, 10, [])
    with pytest.raises(ValueError, match="time order"):
        assoc.update(0.5, 5, [])


# -- sampling plan and the frame iterator -------------------------------------------------------
def test_sampling_plan_budget() -> None:
    inp = TrackInput(video="vid_0", labels=["person"], max_frames=50)
    plan = plan_sampling(20.0, 10.0, 200, inp)
    assert plan.sampled_down and plan.fps == pytest.approx(2.5) and plan.expected == 50
    assert not plan_sampling(4.0, 10.0, 40, inp).sampled_down
    with pytest.raises(ToolError, match="more than max_frames .*lower fps"):
        plan_sampling(20.0, 10.0, 200, TrackInput(video="vid_0", labels=["person"], fps=5, max_frames=50))
    with pytest.raises(ToolError, match="past the end"):
        plan_sampling(3.0, 10.0, 30, TrackInput(video="vid_0", labels=["person"], start=5))
    ranged = plan_sampling(20.0, 10.0, 200, TrackInput(video="vid_0", labels=["person"], start=2, end=4, stride=2))
    assert (ranged.start, ranged.end, ranged.expected, ranged.rate) == (2, 4, 10, 5.0)
    with pytest.raises(ValueError, match="fps or stride"):
        TrackInput(video="vid_0", labels=["person"], fps=2, stride=2)
    with pytest.raises(ValueError, match="after start"):
        TrackInput(video="vid_0", labels=["person"], start=3, end=2)


def test_iter_frames_streams_by_time(tmp_path: Path) -> None:
    path = str(write_video(tmp_path / "v.mp4", [i / 10 for i in range(30)]))
    five = list(iter_frames(path, fps=5))
    assert [f.timestamp for f in five] == pytest.approx([i / 5 for i in range(15)])
    assert [f.index for f in five] == [frame_index(f.image) for f in five] == list(range(0, 30, 2))
    ranged = list(iter_frames(path, stride=4, start=1.05, end=2.5))
    assert [frame_index(f.image) for f in ranged] == [f.index for f in ranged] == [11, 15, 19, 23]
    assert [f.index for f in iter_frames(path, start=2.0, max_frames=3)] == [20, 21, 22]
    assert list(iter_frames(path, start=10.0)) == []
    with pytest.raises(ValueError, match="not both"):
        iter_frames(path, fps=1, stride=2)


# -- the whole tool on the tiny detector --------------------------------------------------------
@pytest.fixture(scope="module")
def crossing_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return CROSSING.write(tmp_path_factory.mktemp("track") / "crossing.mp4")


ARGS = {"video": "vid_0", "labels": ["square"], "fps": 2.5, "box_threshold": 0.0, "track_threshold": 0.0, "min_track_length": 2}
QUESTION = "How many squares walked past?"


@pytest.fixture(scope="module")
def tracked(tiny_config, shared_pool, crossing_video: Path):
    """One run: ``track`` on the crossing video, then a final citing trk_1_0 with a wrong count;
    its trace is written beside the video (``trace.jsonl``)."""
    from visagent.agent import Agent
    from visagent.planners import ScriptedPlanner

    plan = [{"tool": "track", "args": ARGS}, {"final": "99 squares walked past [trk_1_0].", "evidence": ["trk_1_0", "obs_1"]}]
    agent = Agent(tiny_config, planner=ScriptedPlanner(plan), pool=shared_pool)
    run = agent.stream(QUESTION, [str(crossing_video)], trace_path=crossing_video.with_name("trace.jsonl"))
    answer = run.result()
    return answer, run


def test_track_tool_through_the_agent(tracked) -> None:
    answer, run = tracked
    step = tool_steps(answer)[0]
    assert step.tool == "track", answer.trace.steps
    out = TrackOutput.model_validate(step.output)
    assert out.frames == 8 and out.fps == 2.5 and (out.width, out.height) == (W, H)
    assert out.count == len(out.tracks) == sum(out.counts.values()) and set(out.counts) == {"square"}
    assert out.min_track_length == 2 and all(len(t.points) >= 2 for t in out.tracks)
    assert out.tracker.startswith("ByteTrack (trackers ")
    assert out.tracks, step.observation  # the tiny detector's (random, fixed) boxes repeat on similar frames
    for i, t in enumerate(out.tracks):
        assert t.id == f"trk_1_{i}" and t.image == "vid_0" and t.label == "square"
        times = [p.time for p in t.points]
        assert times == sorted(times) and (t.first_seen, t.last_seen) == (times[0], times[-1])
        assert all(p.frame == round(p.time * FPS) and p.frame % 4 == 0 for p in t.points)
        assert t.box == t.points[0].box and t.mean_score == pytest.approx(np.mean([p.score for p in t.points]), abs=1e-3)
    firsts = [t.first_seen for t in out.tracks]
    assert firsts == sorted(firsts)
    for text in ("box_threshold 0", "track_threshold 0", "lost_seconds 1", f"distinct {out.count} 'square'", "shorter track"):
        assert text in step.observation
    assert answer.ok, answer.error
    ev = answer.evidence[0]  # the cited track resolves to its boxes over time
    assert ev.id == "trk_1_0" and ev.tool == "track" and len(ev.region["points"]) == len(out.tracks[0].points)
    assert f"{out.tracks[0].first_seen:.2f}-{out.tracks[0].last_seen:.2f} s" in ev.describe()
    assert isinstance(run.session.region("trk_1_0"), TrackRegion)


def test_track_replays_from_its_trace(tracked, crossing_video: Path) -> None:
    from visagent.pool import ModelPool
    from visagent.replay import replay

    answer, _ = tracked
    result = replay(crossing_video.with_name("trace.jsonl"), pool=ModelPool())
    assert result.same and result.ran == 0 and result.served == 1
    assert [e.region for e in result.answer.evidence] == [e.region for e in answer.evidence]
    assert result.answer.warnings == answer.warnings


def test_track_tool_errors(make_agent, crossing_video: Path) -> None:
    plan = [
        {"tool": "track", "args": {**ARGS, "fps": None, "stride": 1, "max_frames": 5}},
        {"tool": "track", "args": {**ARGS, "start": 9.0}},
        {"final": "no idea"},
    ]
    answer = make_agent(plan).stream(QUESTION, [str(crossing_video)]).result()
    errors = [s.message for s in answer.trace.steps if s.type == "error"]
    assert any("more than max_frames (5)" in m for m in errors), errors
    assert any("past the end of the video" in m for m in errors), errors


# -- grounding ------------------------------------------------------------------------------------
def test_distinct_count_answer_is_cross_checked_against_the_tracks(tracked) -> None:
    from types import SimpleNamespace

    from visagent.grounding import GroundingPolicy
    from visagent.types import Final

    answer, _ = tracked
    count = tool_steps(answer)[0].output["count"]
    assert count != 99
    assert any(
        w.startswith("track cross-check: the answer says 99") and f"counted {count} distinct 'square'" in w
        for w in answer.warnings
    )
    # the same run's steps with the tool's number: no warning
    run = SimpleNamespace(
        question=QUESTION, trace=answer.trace, max_steps=10, step_number=2, tools=["track"],
        resolvable=lambda i: True, known_ids=lambda: [],
    )  # fmt: skip
    policy = GroundingPolicy()
    for text, warned in ((f"{count} squares walked past.", False), ("Some squares.", True)):
        state = policy.new_state()
        assert policy.check(Final(answer=text, evidence=["obs_1"]), run, state) is None
        assert any("track cross-check" in w for w in state.warnings) == warned, (text, state.warnings)


def test_distinct_count_on_a_video_without_track_warns(make_agent, crossing_video: Path) -> None:
    plan = [{"final": "2 squares.", "evidence": []}]
    answer = make_agent(plan).stream("How many different squares crossed the frame?", [str(crossing_video)]).result()
    assert any("no track tool ran" in w for w in answer.warnings), answer.warnings
    plain = make_agent(plan).stream("What moves?", [str(crossing_video)]).result()
    assert not any("track cross-check" in w for w in plain.warnings)


# -- --show and the report ----------------------------------------------------------------------
def test_show_writes_an_annotated_video_and_a_track_sheet(tracked, tmp_path: Path) -> None:
    from PIL import Image

    from visagent.errors import UsageError
    from visagent.render import render_answer
    from visagent.tools.video import probe

    answer, run = tracked
    track = answer.evidence[0].region
    for suffix in (".mp4", ".webm"):
        out = tmp_path / f"show{suffix}"
        render_answer(answer, run.media, out)
        frames = list(iter_frames(str(out)))
        meta = probe(str(out))
        assert (meta.width, meta.height) == (W, H) and len(frames) >= len(track["points"])
        if suffix == ".mp4":  # the track's box is drawn where it was seen: its outline differs from the source frame
            src = {f.index: f for f in iter_frames(str(run.media.video_path("vid_0")))}
            p = track["points"][len(track["points"]) // 2]
            drawn = next(f for f in frames if abs(f.timestamp - p["time"]) < 1e-3)
            x0, y0, x1, y1 = (int(round(v)) for v in p["box"])
            edge = (slice(max(y0, 0), min(y1 + 1, H)), slice(max(x0, 0), min(x0 + 2, W)))
            diff = np.abs(np.asarray(drawn.image, float)[edge] - np.asarray(src[p["frame"]].image, float)[edge]).mean()
            assert diff > 20, diff
    png = tmp_path / "show.png"
    render_answer(answer, run.media, png)
    sheet = Image.open(png)
    assert sheet.width >= 480 and sheet.height > H * 2  # frames along the track, then its timeline
    no_tracks = answer.model_copy(update={"evidence": [e for e in answer.evidence if e.kind != "region"]})
    with pytest.raises(UsageError, match="cites none"):
        render_answer(no_tracks, run.media, tmp_path / "none.mp4")


def test_report_has_a_track_timeline_and_plays_the_video(tracked, tmp_path: Path) -> None:
    import base64
    import re

    from visagent.report import report_html
    from visagent.tools.video import probe

    answer, run = tracked
    html = report_html(answer, run.media)
    out = tool_steps(answer)[0].output
    assert html.count('<g class="track') == len(out["tracks"])
    assert '<g class="track cited" data-id="trk_1_0">' in html
    video = re.search(r'<video class="video" data-id="vid_0"[^>]* src="data:video/webm;base64,([A-Za-z0-9+/=]+)"', html)
    assert video is not None
    path = tmp_path / "played.webm"
    path.write_bytes(base64.b64decode(video.group(1)))
    assert len(list(iter_frames(str(path)))) == probe(str(run.media.video_path("vid_0"))).frames  # the whole video
    assert re.search(r"trk_1_0 square [0-9.]+ on vid_0: [0-9.]+-[0-9.]+ s, \d+ boxes", html)


def test_report_plays_the_video_in_headless_chromium(tracked, tmp_path: Path) -> None:
    from tests.test_report import CHROMIUM_ARGS, _chromium_or_skip
    from visagent.report import write_report

    exe = _chromium_or_skip()
    from playwright.sync_api import sync_playwright

    answer, run = tracked
    out = tmp_path / "report.html"
    write_report(answer, run.media, out)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page()
            page.goto(out.as_uri())
            page.wait_for_function("() => document.querySelector('video.video').readyState >= 2", timeout=20_000)
            duration = page.eval_on_selector("video.video", "v => v.duration")
            assert duration == pytest.approx(CROSSING.seconds, abs=0.3)
            assert page.locator("svg.timeline g.track").count() == len(tool_steps(answer)[0].output["tracks"])
        finally:
            browser.close()


def test_objects_with_frames_over_time_draw_like_tracks() -> None:
    from PIL import Image

    from visagent.render_video import timeline, timeline_svg, track_frame, tracks_in

    obj = {"id": "vmask_1_0", "image": "vid_0", "box": [10, 10, 30, 30], "frames": [
        {"time": 0.0, "frame": 0, "box": [10, 10, 30, 30], "area": 400}, {"time": 0.5, "frame": 5, "box": [40, 10, 60, 30], "area": 400},
    ]}  # fmt: skip
    (track,) = tracks_in([obj, {"id": "det_2_0", "image": "img_0", "box": [0, 0, 5, 5]}])
    assert [p["time"] for p in track["points"]] == [0.0, 0.5]
    assert '<g class="track cited" data-id="vmask_1_0">' in timeline_svg([track], cited=["vmask_1_0"])
    assert timeline([track]).size == (720, 22 + 30)
    blank = Image.new("RGB", (W, H), (128, 128, 128))
    drawn = np.asarray(track_frame(blank, [track], 0.5)).astype(int)
    assert (np.abs(drawn - 128).sum(axis=2)[10:31, 40] > 60).all()  # the box's left edge at its second sighting
    assert (np.abs(drawn - 128).sum(axis=2)[10:31, 10] < 10).all()  # not at the first one any more


@pytest.mark.parametrize("gop", [5, 250])
def test_sparse_fps_seeks_and_gives_the_same_frames(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, gop: int) -> None:
    import av

    import visagent.tools.video as video

    path = tmp_path / f"gop{gop}.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=10, options={"sc_threshold": "0"})  # keyframes every gop frames only
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.codec_context.gop_size = gop
        for i in range(80):
            a = np.zeros((48, 64, 3), np.uint8)
            a[..., 0], a[..., 1] = (i % 25) * 10, (i // 25) * 10
            frame = av.VideoFrame.from_ndarray(a, format="rgb24")
            frame.pts = i
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    seeks: list[int] = []
    original = av.container.InputContainer.seek

    def counting(self, *args, **kwargs):  # noqa: ANN001, ANN202
        seeks.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(av.container.InputContainer, "seek", counting)
    got = [(f.timestamp, f.index, frame_index(f.image)) for f in iter_frames(str(path), fps=0.4, start=0.5)]
    sought = len(seeks)
    monkeypatch.setattr(video, "SEEK_THRESHOLD_S", 1e9)  # never seek between ticks
    assert got == [(f.timestamp, f.index, frame_index(f.image)) for f in iter_frames(str(path), fps=0.4, start=0.5)]
    assert [i for _, i, _ in got] == [5, 30, 55]
    assert sought > 4 if gop == 5 else sought <= 3, sought  # long groups of pictures: one seek tells, then frame by frame
