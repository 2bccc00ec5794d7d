"""The ``segment`` tool on tiny SAM checkpoints, both backends (transformers SamModel and the
official segment-anything SamPredictor): structure, sizes, RLE, ids, embedding cache, batching,
bad arguments, scripted runs through the agent and the CLI."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from tests.helpers import ask_cli
from visagent.agent import Agent
from visagent.config import load_config
from visagent.media import MediaStore
from visagent.planners import ScriptedPlanner
from visagent.pool import ModelPool
from visagent.session import Session
from visagent.tools.base import OBSERVATION_LIMIT
from visagent.tools.segment import Mask, Prompts, Segment, SegmentInput, mask_to_rle, rle_to_mask
from visagent.types import ErrorStep, ToolStep

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # pycocotools + numpy 2

#: variant -> (backend, checkpoint): SamModel, segment-anything's Sam, Sam2Model
VARIANTS = {
    "transformers": ("transformers", "tiny:sam"),
    "official": ("official", "tiny:sam"),
    "sam2": ("transformers", "tiny:sam2"),
}
HAS_DETECT = importlib.util.find_spec("visagent.tools.detect") is not None


# -- fixtures / helpers ------------------------------------------------------------------------
def _segment_config(variant: str) -> dict[str, Any]:
    backend, checkpoint = VARIANTS[variant]
    return {"checkpoint": checkpoint, "backend": backend}


def _config(variant: str) -> Any:
    return load_config(
        profile="tiny",
        overrides={"models": {"segment": _segment_config(variant)}},
        environ={"VISAGENT_CACHE_DIR": os.environ["VISAGENT_CACHE_DIR"]},
    )


@pytest.fixture(scope="module")
def pools() -> dict[str, ModelPool]:
    # one pool per variant: both backends use the checkpoint name "tiny:sam"
    return {v: ModelPool() for v in VARIANTS}


@pytest.fixture(params=list(VARIANTS))
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


def _ctx(backend: str, pools: dict[str, ModelPool], *images: Any) -> Session:
    media = MediaStore()
    for image in images or ("sample:coffee",):
        media.add(image)
    return Session(_config(backend), pools[backend], media)


def _segment(session: Session, **args: Any) -> Any:
    """One segment call in ``session``; its cache events stay in ``session.last_cache``."""
    ctx = session.open_call()
    out = Segment().run(SegmentInput(**args), ctx)
    session.last_cache = ctx.cache  # type: ignore[attr-defined]
    return out


def _agent(backend: str, pools: dict[str, ModelPool], plan: list[dict[str, Any]]) -> Agent:
    return Agent(_config(backend), planner=ScriptedPlanner(plan), pool=pools[backend])


class CallCounter:
    """Counts forward calls of a torch module and remembers the batch size of the first input."""

    def __init__(self, module: Any) -> None:
        self.calls = 0
        self.batches: list[int] = []
        self.handle = module.register_forward_hook(self._hook, with_kwargs=True)

    def _hook(self, module: Any, args: tuple, kwargs: dict, output: Any) -> None:
        self.calls += 1

    def remove(self) -> None:
        self.handle.remove()


# portrait and landscape, neither square: masks must come back at exactly these sizes
PORTRAIT = Image.fromarray(np.random.default_rng(0).integers(0, 255, (131, 70, 3), dtype=np.uint8))
LANDSCAPE_BOXES = [[10.0, 20.0, 200.0, 150.0], [300.0, 50.0, 590.0, 390.0]]
PORTRAIT_BOXES = [[0.0, 0.0, 70.0, 60.0], [5.5, 40.2, 50.0, 130.0]]


# -- pure helpers ------------------------------------------------------------------------------
def test_rle_round_trip_is_json_and_column_major() -> None:
    masks = np.zeros((2, 5, 7), dtype=bool)
    masks[0, 1:3, 2:6] = True
    masks[1, 4, 0] = True
    rles = mask_to_rle(masks)
    assert json.loads(json.dumps(rles)) == rles
    assert [r["size"] for r in rles] == [[5, 7], [5, 7]]
    for m, r in zip(masks, rles):
        assert np.array_equal(rle_to_mask(r), m)
        assert mask_utils.area({"size": r["size"], "counts": r["counts"].encode()}) == m.sum()


# -- structure ---------------------------------------------------------------------------------
@pytest.mark.parametrize("orientation", ["landscape", "portrait"])
def test_output_structure_and_mask_size(backend: str, pools: dict, orientation: str) -> None:
    image, boxes = ("sample:coffee", LANDSCAPE_BOXES) if orientation == "landscape" else (PORTRAIT, PORTRAIT_BOXES)
    ctx = _ctx(backend, pools, image)
    w, h = ctx.media.image("img_0").size
    assert w != h
    out = _segment(ctx, image="img_0", boxes=boxes)
    assert (out.width, out.height) == (w, h)
    assert [m.id for m in out.masks] == ["mask_1_0", "mask_1_1"]
    for m in out.masks:
        assert isinstance(m, Mask) and m.image == "img_0"
        assert m.rle["size"] == [h, w] and isinstance(m.rle["counts"], str)
        decoded = rle_to_mask(m.rle)
        assert decoded.shape == (h, w)
        assert m.area == int(decoded.sum())
        assert 0 <= m.box[0] < m.box[2] <= w and 0 <= m.box[1] < m.box[3] <= h
        assert m.score is not None and 0.0 <= m.score <= 1.0
    dumped = json.loads(out.model_dump_json())
    assert type(out).model_validate(dumped) == out
    assert out.regions() == out.masks
    obs = out.observation()
    assert len(obs) <= OBSERVATION_LIMIT and "mask_1_0" in obs and f"{w}x{h}" in obs


def test_rle_decodes_to_the_decoded_mask(backend: str, pools: dict) -> None:
    ctx = _ctx(backend, pools)
    out = _segment(ctx, image="img_0", boxes=LANDSCAPE_BOXES)
    with ctx.open_call().model("segment") as bundle:
        (state,) = ctx.media.cache("img_0").values()
        masks, scores = bundle.decode(state, Prompts(LANDSCAPE_BOXES, None, None))
    masks = masks.cpu().numpy()
    assert masks.shape == (2, 400, 600)
    for m, direct, score in zip(out.masks, masks, scores.tolist()):
        coco = mask_utils.decode({"size": m.rle["size"], "counts": m.rle["counts"].encode("ascii")})
        assert np.array_equal(coco.astype(bool), direct)
        assert m.area == int(direct.sum())
        if direct.any():
            ys, xs = np.nonzero(direct)
            assert m.box == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
        assert m.score == pytest.approx(min(1.0, max(0.0, score)), abs=1e-6)


def test_points_only_and_points_with_boxes(backend: str, pools: dict) -> None:
    ctx = _ctx(backend, pools)
    one = _segment(ctx, image="img_0", points=[[300, 200]])
    assert [m.id for m in one.masks] == ["mask_1_0"] and one.masks[0].source is None
    both = _segment(ctx, image="img_0", boxes=LANDSCAPE_BOXES, points=[[100, 100], [500, 300]], point_labels=[1, 0])
    assert [m.id for m in both.masks] == ["mask_2_0", "mask_2_1"]
    assert all(m.rle["size"] == [400, 600] for m in both.masks)


def test_ids_unique_across_calls_and_masks_usable_as_boxes(backend: str, pools: dict) -> None:
    plan = [
        {"tool": "segment", "args": {"image": "img_0", "boxes": LANDSCAPE_BOXES}},
        {"tool": "segment", "args": {"image": "img_0", "boxes": ["mask_1_1", [0, 0, 600, 400]]}},
        {"final": "done", "evidence": ["mask_2_0"]},
    ]
    ans = _agent(backend, pools, plan).ask("segment", ["sample:coffee"])
    assert ans.status == "answered", ans.error
    steps = ans.trace.tool_steps()
    ids = [m["id"] for s in steps for m in s.output["masks"]]
    assert ids == ["mask_1_0", "mask_1_1", "mask_2_0", "mask_2_1"]
    assert len(set(ids)) == len(ids)
    assert steps[1].output["masks"][0]["source"] == "mask_1_1"
    assert ans.evidence[0].tool == "segment" and ans.evidence[0].region["rle"]["size"] == [400, 600]


# -- cache and batching ------------------------------------------------------------------------
def test_image_encoder_runs_once_per_image(backend: str, pools: dict) -> None:
    ctx = _ctx(backend, pools, "sample:coffee", PORTRAIT)
    with ctx.open_call().model("segment") as bundle:
        encoder = CallCounter(bundle.image_encoder)
    events = []
    try:
        for args in (
            {"boxes": LANDSCAPE_BOXES},
            {"points": [[10, 10]]},
            {"boxes": LANDSCAPE_BOXES[:1], "points": [[50, 60]], "point_labels": [0]},
        ):
            _segment(ctx, image="img_0", **args)
            events.append(ctx.last_cache["sam_image_embedding"])
        assert encoder.calls == 1
        assert events == ["miss", "hit", "hit"]
        _segment(ctx, image="img_1", boxes=PORTRAIT_BOXES)
        assert encoder.calls == 2 and ctx.last_cache["sam_image_embedding"] == "miss"
        _segment(ctx, image="img_1", points=[[3, 3]])
        assert encoder.calls == 2 and ctx.last_cache["sam_image_embedding"] == "hit"
    finally:
        encoder.remove()


def test_n_boxes_go_through_one_decoder_call(backend: str, pools: dict) -> None:
    ctx = _ctx(backend, pools)
    rng = np.random.default_rng(1)
    x0 = rng.uniform(0, 500, 16)
    y0 = rng.uniform(0, 300, 16)
    boxes = [[float(a), float(b), float(a) + 90, float(b) + 90] for a, b in zip(x0, y0)]
    _segment(ctx, image="img_0", points=[[1, 1]])  # embedding in the cache
    with ctx.open_call().model("segment") as bundle:
        decoder = CallCounter(bundle.mask_decoder)
        encoder = CallCounter(bundle.image_encoder)
    try:
        out = _segment(ctx, image="img_0", boxes=boxes)
    finally:
        decoder.remove()
        encoder.remove()
    assert decoder.calls == 1 and encoder.calls == 0
    assert len(out.masks) == 16 and len({m.id for m in out.masks}) == 16


def test_backends_return_the_same_structure(pools: dict) -> None:
    outs = {}
    for variant in VARIANTS:
        ctx = _ctx(variant, pools)
        outs[variant] = _segment(ctx, image="img_0", boxes=LANDSCAPE_BOXES, points=[[50, 50]]).model_dump(mode="json")
    a = outs["transformers"]
    for b in (outs["official"], outs["sam2"]):
        _same_structure(a, b)


def _shape(value: Any) -> Any:
    """The JSON structure with leaves replaced by their type names."""
    if isinstance(value, dict):
        return {k: _shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_shape(v) for v in value]
    return type(value).__name__


def _same_structure(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert set(a) == set(b)
    assert len(a["masks"]) == len(b["masks"]) == 2
    for ma, mb in zip(a["masks"], b["masks"]):
        assert (ma["id"], ma["image"], ma["rle"]["size"]) == (mb["id"], mb["image"], mb["rle"]["size"])
        assert {k: _shape(v) for k, v in ma.items() if k != "rle"} == {k: _shape(v) for k, v in mb.items() if k != "rle"}
        assert set(ma["rle"]) == set(mb["rle"]) == {"size", "counts"} and isinstance(mb["rle"]["counts"], str)
    assert (a["width"], a["height"]) == (b["width"], b["height"]) == (600, 400)


# -- bad arguments -----------------------------------------------------------------------------
BAD = [
    ({"image": "img_0"}, "give boxes"),
    ({"image": "img_0", "boxes": []}, "give boxes"),
    ({"image": "img_0", "boxes": ["det_9_0"]}, "unknown region id 'det_9_0'"),
    ({"image": "img_0", "boxes": [[10, 10, 700, 100]]}, "boxes[0] [10, 10, 700, 100] is outside img_0 (600x400 px)"),
    ({"image": "img_0", "boxes": [[-50, -50, -10, -10]]}, "is outside img_0"),
    ({"image": "img_0", "boxes": [[10, 10, 5, 100]]}, "empty"),
    ({"image": "img_0", "boxes": [[1, 2, 3]]}, "boxes[0] must be [x0, y0, x1, y1]"),
    ({"image": "img_0", "boxes": [[float("nan"), 0, 10, 10]]}, "non-finite"),
    ({"image": "img_0", "points": [[1, float("inf")]]}, "non-finite"),
    ({"image": "img_0", "points": [[10, 10], [20, 20]], "point_labels": [1]}, "point_labels has 1 entries but points has 2"),
    ({"image": "img_0", "points": [[10, 10]], "point_labels": [2]}, "point_labels must be 1"),
    ({"image": "img_0", "point_labels": [1]}, "give boxes"),
    ({"image": "img_0", "points": [[650, 10]]}, "points[0] [650, 10] is outside img_0 (600x400 px)"),
    ({"image": "img_7", "points": [[1, 1]]}, "img_7"),
]


@pytest.mark.parametrize(("args", "needle"), BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_arguments_are_error_observations(pools: dict, args: dict, needle: str) -> None:
    plan = [{"tool": "segment", "args": args}, {"final": "no", "evidence": []}]
    ans = _agent("transformers", pools, plan).ask("segment", ["sample:coffee"])
    errors = [s for s in ans.trace.steps if isinstance(s, ErrorStep) and s.source != "final"]  # not the grounding send-back
    assert len(errors) == 1 and errors[0].tool == "segment"
    assert needle in errors[0].message, errors[0].message
    assert "\n" not in errors[0].message


def test_region_from_another_image_is_an_error(pools: dict) -> None:
    plan = [
        {"tool": "segment", "args": {"image": "img_1", "points": [[5, 5]]}},
        {"tool": "segment", "args": {"image": "img_0", "boxes": ["mask_1_0"]}},
        {"final": "no", "evidence": []},
    ]
    ans = _agent("transformers", pools, plan).ask("segment", ["sample:coffee", PORTRAIT])
    err = [s for s in ans.trace.steps if isinstance(s, ErrorStep) and s.source != "final"]
    assert len(err) == 1 and "region mask_1_0 is on img_1, not on img_0" in err[0].message


# -- scripted runs -----------------------------------------------------------------------------
def test_scripted_segment_then_segment_again(backend: str, pools: dict) -> None:
    plan = [
        {"tool": "segment", "args": {"image": "img_0", "boxes": LANDSCAPE_BOXES}},
        {"tool": "segment", "args": {"image": "img_0", "boxes": ["mask_1_0", "mask_1_1"], "points": [[300, 200]]}},
        {"final": "two masks", "evidence": ["mask_2_0", "mask_2_1"]},
    ]
    ans = _agent(backend, pools, plan).ask("segment the objects", ["sample:coffee"])
    assert ans.status == "answered", ans.error
    steps = ans.trace.tool_steps()
    assert [s.cache for s in steps] == [{"sam_image_embedding": "miss"}, {"sam_image_embedding": "hit"}]
    assert all(s.models == [VARIANTS[backend][1]] for s in steps)
    assert [e.id for e in ans.evidence] == ["mask_2_0", "mask_2_1"]


def _detections(step: ToolStep) -> list[dict[str, Any]]:
    return [v for value in step.output.values() if isinstance(value, list) for v in value if isinstance(v, dict) and str(v.get("id", "")).startswith("det_")]


def _detect_plan(ids: list[str]) -> list[dict[str, Any]]:
    return [
        {"tool": "segment", "args": {"image": "img_0", "boxes": ids}},
        {"tool": "segment", "args": {"image": "img_0", "boxes": ids[:1], "points": [[300, 200]]}},
    ]


@pytest.mark.skipif(not HAS_DETECT, reason="tools/detect.py is not in this tree yet")
def test_scripted_detect_then_segment(backend: str, pools: dict) -> None:
    from visagent.planners import FunctionPlanner

    # detect with a zero threshold (random tiny weights), then segment the boxes it found
    def plan(state: Any) -> Any:
        tool_steps = [s for s in state.steps if isinstance(s, ToolStep)]
        n = len(tool_steps)
        if n == 0:
            return {"tool": "detect", "args": {"image": "img_0", "labels": ["cup"], "box_threshold": 0.0, "text_threshold": 0.0}}
        ids = [d["id"] for d in _detections(tool_steps[0])][:4]
        assert ids, "detect found nothing at threshold 0"
        if n <= 2:
            return _detect_plan(ids)[n - 1]
        return {"final": "segmented", "evidence": [m["id"] for m in tool_steps[2].output["masks"]]}

    agent = Agent(_config(backend), planner=FunctionPlanner(plan), pool=pools[backend])
    ans = agent.ask("segment the cup", ["sample:coffee"])
    assert ans.status == "answered", ans.error
    det, seg1, seg2 = ans.trace.tool_steps()
    ids = [d["id"] for d in _detections(det)][:4]
    assert [m["source"] for m in seg1.output["masks"]] == ids
    assert [m["label"] for m in seg1.output["masks"]] == [d["label"] for d in _detections(det)][:4]
    assert seg1.cache == {"sam_image_embedding": "miss"} and seg2.cache == {"sam_image_embedding": "hit"}
    assert len(seg2.output["masks"]) == 1 and seg2.output["masks"][0]["source"] == ids[0]


def _cli(tmp_path: Path, plan: list[dict[str, Any]], backend: str) -> dict[str, Any]:
    config = None if backend == "transformers" else {"models": {"segment": _segment_config(backend)}}
    proc = ask_cli(tmp_path, ["sample:coffee"], "segment the cup", plan, config=config)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)


@pytest.mark.parametrize("variant", ["transformers", "official"])
def test_cli_scripted_segment_run(variant: str, tmp_path: Path) -> None:
    """detect -> count -> segment(boxes=[det ids]) -> segment again, through `python -m visagent.cli`."""
    if HAS_DETECT:  # threshold 0: the tiny random detector always returns boxes
        zero = {"box_threshold": 0.0, "text_threshold": 0.0}
        plan: list[dict[str, Any]] = [
            {"tool": "detect", "args": {"image": "img_0", "labels": ["cup"], **zero}},
            {"tool": "count", "args": {"image": "img_0", "label": "cup", **zero}},
        ]
        first_boxes: list[Any] = ["det_1_0", "det_1_1"]
    else:
        plan, first_boxes = [], [[150, 40, 450, 380], [10, 10, 100, 100]]
    n = len(plan) + 1  # call number of the first segment
    plan += [
        {"tool": "segment", "args": {"image": "img_0", "boxes": first_boxes}},
        {"tool": "segment", "args": {"image": "img_0", "boxes": [f"mask_{n}_0"], "points": [[300, 200]]}},
        {"final": "a cup", "evidence": [f"mask_{n}_1", f"mask_{n + 1}_0"]},
    ]
    result = _cli(tmp_path, plan, variant)
    assert result["status"] == "answered", result.get("error")
    assert [e["id"] for e in result["evidence"]] == [f"mask_{n}_1", f"mask_{n + 1}_0"]
    first, second = (e["region"] for e in result["evidence"])
    assert first["rle"]["size"] == second["rle"]["size"] == [400, 600]
    assert second["source"] == f"mask_{n}_0"
    if HAS_DETECT:
        assert first["source"] == "det_1_1" and first["label"] == "cup"
    seg = [s for s in result["trace"]["steps"] if s.get("type") == "tool" and s["tool"] == "segment"]
    assert [s["cache"] for s in seg] == [{"sam_image_embedding": "miss"}, {"sam_image_embedding": "hit"}]
    assert [s for s in result["trace"]["steps"] if s.get("type") == "error"] == []
