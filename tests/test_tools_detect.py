"""detect / count on tiny random Grounding DINO (transformers and official groundingdino-py
backends) and OWLv2 checkpoints. Random weights: thresholds are lowered to 0.0 where detections
are needed, and structure (not numbers) is asserted, against the libraries' own post-processing."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image

from tests.helpers import ask_cli, error_steps, tool_steps
from visagent.config import load_config

BACKENDS = ["transformers", "official"]
LOW = {"box_threshold": 0.0, "text_threshold": 0.0}
DET_KEYS = {"id", "image", "box", "score", "label"}


def _config(tiny_config, **detect):
    return load_config(
        profile="tiny",
        overrides={"cache_dir": tiny_config.cache_dir, "models": {"detect": dict({"checkpoint": "tiny:grounding-dino"}, **detect)}},
        environ={},
    )


def _agent(config, pool, plan):
    from visagent.agent import Agent
    from visagent.planners import ScriptedPlanner

    return Agent(config, planner=ScriptedPlanner(plan), pool=pool)




@pytest.fixture(scope="module")
def wide_image():
    """A non-square image (300 x 120) with some structure."""
    rng = np.random.default_rng(0)
    arr = (rng.random((120, 300, 3)) * 255).astype("uint8")
    arr[20:80, 40:120] = [220, 30, 30]
    return Image.fromarray(arr)


_POOLS: dict = {}


def _pool(backend):
    """One pool per backend: the pool keys models by checkpoint, and both backends name the
    same ``tiny:grounding-dino``."""
    from visagent.pool import ModelPool

    return _POOLS.setdefault(backend, ModelPool())


@pytest.fixture(scope="module", params=BACKENDS)
def backend_config(request, tiny_config):
    return request.param, _config(tiny_config, backend=request.param)


def _bundle(config, pool):
    from visagent.context import Models

    return Models(config, pool).use("detect")


# -- pure helpers ----------------------------------------------------------------------------
def test_phrase_formatting():
    from visagent.tools.detect import clean_label, format_caption

    assert clean_label("  Red   Cup. ") == "red cup"
    assert format_caption(["Cat", " Remote Control. "]) == "cat. remote control."


def test_long_label_lists_are_split_under_the_token_limit(tiny_config):
    from transformers import AutoTokenizer

    from visagent.checkpoints import ensure_tiny
    from visagent.errors import ToolError
    from visagent.tools.detect import plan_chunks

    tok = AutoTokenizer.from_pretrained(ensure_tiny("grounding-dino", "transformers", tiny_config.cache_path))
    labels = ["red cup", "coffee", "a man", "table", "cat", "dog", "white mug", "blue coin"]
    chunks = plan_chunks(tok, labels, 10)
    assert len(chunks) > 1 and [lb for c in chunks for lb in c.labels] == labels
    for chunk in chunks:
        ids = tok(chunk.caption)["input_ids"]
        assert ids == chunk.input_ids and len(ids) <= 10
        for label, (s, e) in zip(chunk.labels, chunk.spans):
            assert ids[s:e] == tok(label, add_special_tokens=False)["input_ids"]
            assert tok.convert_ids_to_tokens(ids[e]) == "."
    with pytest.raises(ToolError, match="tokens long"):
        plan_chunks(tok, ["red white blue green black cup"], 6)


def test_box_conversion_to_original_pixels():
    import torch

    from visagent.tools.detect import cxcywh_to_xyxy_pixels

    boxes = torch.tensor([[0.5, 0.5, 0.2, 0.4], [0.95, 0.1, 0.2, 0.4]])
    out = cxcywh_to_xyxy_pixels(boxes, 300, 120)
    assert out[0].tolist() == pytest.approx([120.0, 36.0, 180.0, 84.0])
    assert out[1].tolist() == pytest.approx([255.0, 0.0, 300.0, 36.0])  # clipped to the image


# -- detect, both backends -------------------------------------------------------------------
def test_detect_structure_and_pixels(backend_config, wide_image):
    backend, config = backend_config
    shared_pool = _pool(backend)
    plan = [
        {"tool": "detect", "args": {"image": "img_0", "labels": ["Red Box", "background"], **LOW}},
        {"tool": "detect", "args": {"image": "img_0", "labels": ["red box"]}},
        {"final": "x", "evidence": ["det_1_0"]},
    ]
    ans = _agent(config, shared_pool, plan).ask("q", [wide_image])
    assert ans.ok, ans.error
    low, default = tool_steps(ans)
    out = low.output
    assert (out["width"], out["height"]) == (300, 120) and out["labels"] == ["red box", "background"]
    dets = out["detections"]
    assert dets, "threshold 0 keeps every query"
    ids = [d["id"] for d in dets]
    assert ids == [f"det_1_{i}" for i in range(len(dets))]
    assert default.output["box_threshold"] == 0.35 and default.output["text_threshold"] == 0.25
    assert not set(ids) & {d["id"] for d in default.output["detections"]}
    scores = [d["score"] for d in dets]
    assert scores == sorted(scores, reverse=True)
    for d in dets:
        assert set(d) == DET_KEYS and d["image"] == "img_0" and d["label"] in {"red box", "background"}
        x0, y0, x1, y1 = d["box"]
        assert 0 <= x0 <= x1 <= 300 and 0 <= y0 <= y1 <= 120
        assert 0.0 <= d["score"] <= 1.0
    assert low.models == ["tiny:grounding-dino"]
    assert "box_threshold 0" in low.observation and len(low.observation) <= 500
    assert ans.evidence[0].id == "det_1_0"

    # boxes equal the library's own conversion to original-image pixels
    import torch

    with _bundle(config, shared_pool) as bundle:
        if backend == "transformers":
            caption = "red box. background."
            inputs = bundle.processor(images=wide_image, text=caption, return_tensors="pt")
            with torch.inference_mode():
                outputs = bundle.model(**inputs)
            ref = bundle.processor.post_process_grounded_object_detection(
                outputs, inputs["input_ids"], threshold=0.0, text_threshold=0.0, target_sizes=[(120, 300)]
            )[0]["boxes"].clamp(min=0)
            ref[:, 0::2] = ref[:, 0::2].clamp(max=300)
            ref[:, 1::2] = ref[:, 1::2].clamp(max=120)
        else:
            from groundingdino.util.inference import predict
            from torchvision.ops import box_convert

            pixels = bundle._official_pixels(wide_image)
            boxes, _, _ = predict(bundle.model, pixels, "red box. background.", 0.0, 0.0, device="cpu")
            ref = box_convert(boxes * torch.tensor([300, 120, 300, 120]), in_fmt="cxcywh", out_fmt="xyxy")
            ref[:, 0::2] = ref[:, 0::2].clamp(0, 300)
            ref[:, 1::2] = ref[:, 1::2].clamp(0, 120)
    got = sorted(tuple(d["box"]) for d in dets)
    want = sorted(tuple(round(v, 2) for v in b) for b in ref.tolist())
    assert len(got) == len(want)
    assert np.allclose(got, want, atol=0.02)


def test_backends_return_the_same_structure(tiny_config):
    outputs = {}
    for backend in BACKENDS:
        plan = [{"tool": "detect", "args": {"image": "img_0", "labels": ["cup", "table"], **LOW}}, {"final": "x", "evidence": []}]
        ans = _agent(_config(tiny_config, backend=backend), _pool(backend), plan).ask("q", ["sample:coffee"])
        (step,) = tool_steps(ans)
        outputs[backend] = step.output
    a, b = outputs["transformers"], outputs["official"]
    assert set(a) == set(b)
    assert {k: v for k, v in a.items() if k != "detections"} == {k: v for k, v in b.items() if k != "detections"}
    assert a["detections"] and b["detections"]
    for da, db in zip(a["detections"], b["detections"]):
        assert set(da) == set(db) == DET_KEYS
        assert {k: type(v) for k, v in da.items()} == {k: type(v) for k, v in db.items()}
        assert da["id"] == db["id"]


def test_split_label_lists_run_in_one_batch(tiny_config):
    from visagent.context import Models
    from visagent.pool import ModelPool

    config = _config(tiny_config, options={"max_text_len": 8})
    pool = ModelPool()
    labels = ["cup", "coffee", "table", "red mug", "spoon", "saucer"]
    plan = [{"tool": "detect", "args": {"image": "img_0", "labels": labels, **LOW}}, {"final": "x", "evidence": []}]
    ans = _agent(config, pool, plan).ask("q", ["sample:coffee"])
    (step,) = tool_steps(ans)
    found = {d["label"] for d in step.output["detections"]}
    assert found <= set(labels) and len(found) > 1
    with Models(config, pool).use("detect") as bundle:
        assert bundle.max_text_len == 8 and bundle.forwards == 1  # several captions, one forward


@pytest.mark.parametrize(
    "tool, args, fragment",
    [
        ("detect", {"labels": []}, "labels must not be empty"),
        ("detect", {"labels": ["cup"], "box_threshold": math.nan}, "box_threshold"),
        ("detect", {"labels": ["cup"], "text_threshold": 2.0}, "text_threshold"),
        ("detect", {"labels": [" . "]}, "labels[0] is empty"),
        ("count", {"label": "cup", "nms_iou": 1.5}, "nms_iou"),
        ("count", {"label": "cup", "nms_iou": math.nan}, "nms_iou"),
        ("count", {"label": "  "}, "label must not be empty"),
        ("detect", {"image": "img_9", "labels": ["cup"]}, "img_9"),
        ("count", {"image": "img_9", "label": "cup"}, "img_9"),
    ],
)
def test_bad_arguments_are_error_observations(make_agent, tool, args, fragment):
    plan = [{"tool": tool, "args": {"image": "img_0", **args}}, {"final": "no", "evidence": []}]
    ans = make_agent(plan).ask("q", ["sample:coffee"])
    (error,) = error_steps(ans)
    assert not tool_steps(ans)
    assert fragment in error.message and error.tool == tool
    assert error.source == ("tool" if "image" in args else "args")


# -- count -----------------------------------------------------------------------------------
def test_count_is_detection_then_nms(backend_config):
    import torch
    from torchvision.ops import nms

    backend, config = backend_config
    shared_pool = _pool(backend)
    plan = [
        {"tool": "detect", "args": {"image": "img_0", "labels": ["cup"], **LOW}},
        {"tool": "count", "args": {"image": "img_0", "label": "Cup", **LOW, "nms_iou": 0.3}},
        {"tool": "count", "args": {"image": "img_0", "label": "cup", **LOW, "nms_iou": 1.0}},
        {"final": "1", "evidence": ["det_2_0"]},
    ]
    ans = _agent(config, shared_pool, plan).ask("How many cups?", ["sample:coffee"])
    assert ans.ok, ans.error
    det, count, count_all = tool_steps(ans)
    dets = det.output["detections"]
    boxes = torch.tensor([d["box"] for d in dets])
    scores = torch.tensor([d["score"] for d in dets])
    expected = len(nms(boxes, scores, 0.3))
    c = count.output
    assert c["count"] == expected == len(c["ids"]) == len(c["detections"]) >= 1
    assert c["ids"] == [f"det_2_{i}" for i in range(c["count"])] == [d["id"] for d in c["detections"]]
    assert (c["label"], c["box_threshold"], c["text_threshold"], c["nms_iou"]) == ("cup", 0.0, 0.0, 0.3)
    assert "box_threshold 0, text_threshold 0, NMS IoU 0.3" in count.observation
    assert f"counted {expected} 'cup'" in count.observation
    assert count_all.output["count"] == len(dets)  # IoU 1.0 suppresses nothing
    assert ans.evidence[0].id == "det_2_0" and ans.evidence[0].tool == "count"


# -- OWLv2 -----------------------------------------------------------------------------------
def test_owlv2_checkpoint(tiny_config, shared_pool, wide_image):
    config = _config(tiny_config, checkpoint="tiny:owlv2")
    plan = [
        {"tool": "detect", "args": {"image": "img_0", "labels": ["cup", "table"], **LOW}},
        {"tool": "count", "args": {"image": "img_0", "label": "cup", **LOW}},
        {"final": "x", "evidence": []},
    ]
    ans = _agent(config, shared_pool, plan).ask("q", [wide_image])
    assert ans.ok, ans.error
    det, count = tool_steps(ans)
    assert det.models == ["tiny:owlv2"]
    dets = det.output["detections"]
    assert dets and all(set(d) == DET_KEYS and d["label"] in {"cup", "table"} for d in dets)
    for d in dets:
        x0, y0, x1, y1 = d["box"]
        assert 0 <= x0 <= x1 <= 300 and 0 <= y0 <= y1 <= 120
    assert count.output["count"] >= 1
    with _bundle(config, shared_pool) as bundle:
        assert bundle.kind == "owlv2" and type(bundle.model).__name__ == "Owlv2ForObjectDetection"


# -- official checkpoint format --------------------------------------------------------------
def test_official_tiny_is_an_official_checkpoint(tiny_config):
    import torch

    from visagent.checkpoints import ensure_tiny

    folder = ensure_tiny("grounding-dino", "official", tiny_config.cache_path)
    (weights,) = folder.glob("*.pth")
    (cfg,) = folder.glob("*.py")
    state = torch.load(weights, map_location="cpu", weights_only=True)
    assert set(state) == {"model"} and any(k.startswith("backbone.0.") for k in state["model"])
    assert "modelname = 'groundingdino'" in cfg.read_text() or 'modelname = "groundingdino"' in cfg.read_text()
    assert (folder / "text_encoder" / "config.json").is_file()


def test_official_text_encoder_option(tiny_config, tmp_path):
    import shutil

    import torch

    from visagent.checkpoints import ensure_tiny
    from visagent.errors import ToolError
    from visagent.tools.detect import load_official

    folder = ensure_tiny("grounding-dino", "official", tiny_config.cache_path)
    moved = tmp_path / "ckpt"
    shutil.copytree(folder, moved, ignore=shutil.ignore_patterns("text_encoder"))
    with pytest.raises(ToolError, match="text encoder 'text_encoder' is not available offline"):
        load_official(str(moved), "cpu", torch.float32, {})
    bundle = load_official(str(moved), "cpu", torch.float32, {"text_encoder": str(folder / "text_encoder")})
    assert bundle.backend == "official" and bundle.image_size == 160
    with pytest.raises(ToolError, match="no such folder"):
        load_official(str(moved), "cpu", torch.float32, {"text_encoder": str(tmp_path / "missing")})


# -- CLI: scripted detect -> count on sample:coffee, each backend -----------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_cli_scripted_detect_then_count(backend, tmp_path):
    zero = {"box_threshold": 0.0, "text_threshold": 0.0}
    plan = [
        {"tool": "detect", "args": {"image": "img_0", "labels": ["cup"], **zero}},
        {"tool": "count", "args": {"image": "img_0", "label": "cup", **zero}},
        {"final": "one cup", "evidence": ["det_2_0"]},
    ]
    config = {"models": {"detect": {"checkpoint": "tiny:grounding-dino", "backend": "official"}}} if backend == "official" else None
    proc = ask_cli(tmp_path, ["sample:coffee"], "How many cups?", plan, config=config)
    assert proc.returncode == 0, proc.stderr[-2000:]
    answer = json.loads(proc.stdout)
    assert answer["answer"] == "one cup"
    steps = [s for s in answer["trace"]["steps"] if s["type"] == "tool"]
    assert [s["tool"] for s in steps] == ["detect", "count"]
    count = steps[1]["output"]
    assert count["count"] >= 1 and count["ids"][0] == "det_2_0"
    assert answer["evidence"][0]["id"] == "det_2_0"
    config_models = answer["trace"]["meta"]["config"]["models"]["detect"]
    assert config_models["backend"] == backend


def test_official_bert_warper_matches_bert():
    """The transformers-5 compatibility layer: groundingdino's BERT wrapper computes what BertModel
    computes (2D mask), and a 3D mask that allows every pair equals no masking at all."""
    import torch
    from groundingdino.models.GroundingDINO.bertwarper import BertModelWarper
    from transformers import BertConfig, BertModel

    from visagent.tools._gdino_compat import install

    install()
    torch.manual_seed(0)
    config = BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
    bert = BertModel(config).eval()
    ids = torch.randint(0, 64, (2, 7))
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, 5:] = 0
    with torch.inference_mode():
        expected = bert(input_ids=ids, attention_mask=mask).last_hidden_state
        warper = BertModelWarper(bert_model=bert)
        got = warper(input_ids=ids, attention_mask=mask)["last_hidden_state"]
        full_3d = warper(input_ids=ids, attention_mask=torch.ones(2, 7, 7, dtype=torch.long))["last_hidden_state"]
        full_2d = bert(input_ids=ids).last_hidden_state
    assert torch.allclose(got[0], expected[0], atol=1e-5) and torch.allclose(got[1, :5], expected[1, :5], atol=1e-5)
    assert torch.allclose(full_3d, full_2d, atol=1e-5)
    with pytest.raises(ValueError, match="does not support head_mask"):  # not computed, so not silently dropped
        warper(input_ids=ids, head_mask=torch.ones(4))
