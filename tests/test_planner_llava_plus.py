"""LLaVA-Plus output format: parsing realistic model text and mapping it onto visagent tools."""

from __future__ import annotations

from typing import Any

import pytest

from visagent.errors import PlannerOutputError
from visagent.grounding import GroundingPolicy
from visagent.planners import FunctionPlanner, parse_action
from visagent.planners.llava_plus import API_TOOLS, image_sizes, parse_llava_plus, split_sections
from visagent.tools.detect import Detect  # also registers the det_ prefix cited in finals
from visagent.tools.segment import Segment
from visagent.types import Action, ErrorStep, Final, PlannerReply, ToolStep

GDINO = (
    '"thoughts🤔" Thanks for the image. To find where the dog is, I need to detect it.\n'
    "\"actions🚀\" [{'API_name': 'grounding_dino', 'API_params': {'image': '<imgpath>', 'caption': 'dog . frisbee'}}]\n"
    '"value👉" I will use grounding_dino to help to answer the question. Please wait for a moment.'
)
SAM_BOXES = (
    '"thoughts🤔" Segment the detected dog.\n'
    '"actions🚀" [{"API_name": "sam", "API_params": {"image": "<imgpath>", "boxes": [[0.25, 0.1, 0.75, 0.9],]}}]\n'
    '"value👉" I will use sam to segment it.'
)
SAM_POINTS = (
    "“thoughts🤔” click on the cup “actions🚀” [{'API_name': 'sam', 'API_params': {'image': '<imgpath>', "
    "'points': [[0.5, 0.5], [0.1, 0.2]], 'point_labels': [1, 0]}}] “value👉” ok"
)
FINAL = (
    '"thoughts🤔" The grounding_dino results show two dogs, det_1_0 and det_1_1.\n'
    '"actions🚀" []\n'
    '"value👉" There are two dogs in the image, at det_1_0 and det_1_1.'
)


def test_grounding_dino_maps_to_detect() -> None:
    act = parse_action(GDINO, format="llava_plus")
    assert isinstance(act, Action)
    assert act.tool == "detect"
    assert act.args == {"image": "img_0", "labels": ["dog", "frisbee"]}
    assert act.thought.startswith("Thanks for the image.")


def test_sam_normalized_boxes_become_pixels() -> None:
    act = parse_llava_plus(SAM_BOXES, sizes={"img_0": (640, 480)})
    assert act.tool == "segment"
    assert act.args["boxes"] == [[160.0, 48.0, 480.0, 432.0]]
    with image_sizes({"img_0": (100, 200)}):
        pts = parse_action(SAM_POINTS, format="llava_plus")
    assert pts.args["points"] == [[50.0, 100.0], [10.0, 40.0]]
    assert pts.args["point_labels"] == [1, 0]
    with pytest.raises(PlannerOutputError, match="normalized"):
        parse_action(SAM_BOXES, format="llava_plus")  # no sizes known: no silent misplacement


def test_pixel_boxes_and_media_ids_pass_through() -> None:
    text = '"actions🚀" [{"API_name": "sam", "API_params": {"image": "img_1", "boxes": [10, 20, 110, 220]}}]'
    act = parse_llava_plus(text)
    assert act.args == {"image": "img_1", "boxes": [[10.0, 20.0, 110.0, 220.0]]}


@pytest.mark.parametrize(
    ("api", "tool", "args"),
    [
        ("{'API_name': 'grounding_dino+sam', 'API_params': {'caption': 'cat'}}", "detect", {"image": "img_0", "labels": ["cat"]}),
        ("{'API_name': 'blip2+grounding_dino', 'API_params': {'image': '<imgpath>'}}", "caption", {"image": "img_0"}),
        ("{'API_name': 'easyocr', 'API_params': {'image': '<imgpath>'}}", "ocr", {"image": "img_0"}),
        ("{'API_name': 'clip-retrieval', 'API_params': {'query': 'red car'}}", "search", {"query": "red car"}),
    ],
)
def test_api_mapping(api: str, tool: str, args: dict[str, Any]) -> None:
    act = parse_action(f'"thoughts🤔" x "actions🚀" [{api}] "value👉" wait', format="llava_plus")
    assert (act.tool, act.args) == (tool, args)


def test_empty_actions_is_final_with_cited_ids() -> None:
    fin = parse_action(FINAL, format="llava_plus")
    assert isinstance(fin, Final)
    assert fin.answer == "There are two dogs in the image, at det_1_0 and det_1_1."
    assert fin.evidence == ["det_1_0", "det_1_1"]


def test_quirks_missing_quotes_single_object_python_literals() -> None:
    text = "thoughts🤔 find it\nactions🚀 {'API_name': 'grounding_dino', 'API_params': {'caption': 'cup', 'box_threshold': None}}\nvalue👉 wait"
    assert parse_action(text, format="llava_plus").args == {"image": "img_0", "labels": ["cup"]}
    sections = split_sections('"thoughts🤔" a "actions🚀" [] "value👉" b')
    assert sections == {"thoughts": "a", "actions": "[]", "value": "b"}


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", "empty"),
        ("I think there are two dogs.", "no"),
        ('"thoughts🤔" x "actions🚀" [{"API_name": "sam", "API_params": {"boxes": [[0.1, 0.2, 0.3' , "neither JSON"),
        ('"thoughts🤔" x "actions🚀" [] "value👉" ', "needs a value"),
        ('"actions🚀" [{"API_params": {}}]', "API_name"),
    ],
)
def test_unparseable_text_is_a_clear_error(text: str, match: str) -> None:
    with pytest.raises(PlannerOutputError, match=match):
        parse_action(text, format="llava_plus")


def test_unknown_api_tells_the_available_names(make_agent: Any) -> None:
    from fakes import FAKE_TOOLS

    texts = iter(['"thoughts🤔" x "actions🚀" [{"API_name": "magic_tool", "API_params": {"x": 1}}] "value👉" wait', FINAL.replace("det_1_0 and det_1_1", "nothing")])
    planner = FunctionPlanner(lambda state: parse_llava_plus(next(texts), tools=state.tools))
    answer = make_agent(planner, tools=[*FAKE_TOOLS, Detect, Segment], grounding=GroundingPolicy(require_evidence=False)).ask(
        "How many dogs?", ["sample:coffee"]
    )
    err = [s for s in answer.trace.steps if isinstance(s, ErrorStep)][0]
    assert err.code == "planner_output" and 'unknown API_name "magic_tool"' in err.message
    # in LLaVA-Plus's own terms, limited to the APIs whose tools are on offer
    offered = {t.name for t in FAKE_TOOLS} | {"detect", "segment"}
    names = [a for a, tool in API_TOOLS.items() if tool in offered]
    assert names and f'available API_name values: {", ".join(chr(34) + n + chr(34) for n in names)}' in err.message
    assert answer.ok
    assert '"caption"' not in err.message and '"grounding_dino+sam"' in err.message and '"sam"' in err.message


# -- real LLaVA-Plus output shapes ------------------------------------------------------------------
# serve/sam_test_message_points.py (LLaVA-VL/LLaVA-Plus-Codebase) sends SAM
# points = np.random.rand(1, 3, 2).tolist() and point_labels = (np.random.rand(1, 3) > 0.5).tolist():
# batched (batch, n, 2) points with (batch, n) labels, normalized to the image size.
SAM_BATCHED_POINTS = (
    '"thoughts🤔" The user clicked on the dog; I will segment it with sam.\n'
    '"actions🚀" [{"API_name": "sam", "API_params": {"image": "<imgpath>", "points": [[[0.52, 0.61], [0.3, 0.4], [0.9, 0.1]]], '
    '"point_labels": [[1, 1, 0]]}}]\n'
    '"value👉" I will use sam to help to answer the question. Please wait for a moment.'
)
# llava/serve/gradio_web_server_llava_plus.py builds the tool call from API_params and
# `{"box_threshold": 0.3, "text_threshold": 0.25, **API_params}`; a params key named "value" must not end the actions.
GDINO_VALUE_KEY = (
    '"thoughts🤔" To count the cups I need to detect them.\n'
    "\"actions🚀\" [{'API_name': 'grounding_dino', 'API_params': {'image': '<imgpath>', 'caption': 'cup', \"value\": 0.3}}]\n"
    '"value👉" I will use grounding_dino to help to answer the question. Please wait for a moment.'
)


@pytest.mark.parametrize(
    ("points", "labels", "want_pts", "want_labels"),
    [
        ("[[[0.5, 0.5], [0.1, 0.2]]]", "[[1, 0]]", [[50.0, 100.0], [10.0, 40.0]], [1, 0]),  # (batch, n, 2), (batch, n)
        ("[[0.5, 0.5], [0.1, 0.2]]", "[1, 0]", [[50.0, 100.0], [10.0, 40.0]], [1, 0]),  # (n, 2), (n,)
        ("[0.5, 0.5]", "1", [[50.0, 100.0]], [1]),  # one point, a bare label
        ("[0.5, 0.5]", None, [[50.0, 100.0]], [1]),  # no labels: foreground
    ],
)
def test_sam_point_shapes(points: str, labels: str | None, want_pts: list[list[float]], want_labels: list[int]) -> None:
    params = f'"image": "<imgpath>", "points": {points}' + (f', "point_labels": {labels}' if labels is not None else "")
    act = parse_llava_plus(f'"thoughts🤔" x "actions🚀" [{{"API_name": "sam", "API_params": {{{params}}}}}] "value👉" wait', sizes={"img_0": (100, 200)})
    assert act.args == {"image": "img_0", "points": want_pts, "point_labels": want_labels}


def test_real_sam_batched_points_and_value_key() -> None:
    act = parse_llava_plus(SAM_BATCHED_POINTS, sizes={"img_0": (200, 100)})
    assert act.tool == "segment"
    assert act.args["points"] == [[104.0, 61.0], [60.0, 40.0], [180.0, 10.0]]
    assert act.args["point_labels"] == [1, 1, 0]
    with pytest.raises(PlannerOutputError, match="3 points but 2 point_labels"):
        parse_llava_plus(SAM_BATCHED_POINTS.replace("[[1, 1, 0]]", "[[1, 0]]"), sizes={"img_0": (200, 100)})
    sections = split_sections(GDINO_VALUE_KEY)
    assert sections["actions"].endswith("]") and sections["value"].startswith("I will use grounding_dino")
    assert parse_llava_plus(GDINO_VALUE_KEY).args == {"image": "img_0", "labels": ["cup"]}


@pytest.mark.parametrize(
    ("api", "tool"),
    [
        ("clip", "search"),  # serve/clip_retrieval_worker.py registers --model-names "retrieval,clip"
        ("grounded_sam", "detect"),  # serve/grounded_sam_worker.py; the gradio server plots 'grounding_dino+sam', 'grounded_sam'
        ("grounding_dino+sam", "detect"),
    ],
)
def test_worker_api_names(api: str, tool: str) -> None:
    params = "{'query': 'a red car'}" if tool == "search" else "{'image': '<imgpath>', 'caption': 'dog .'}"
    act = parse_action(f'"thoughts🤔" x "actions🚀" [{{"API_name": "{api}", "API_params": {params}}}] "value👉" wait', format="llava_plus")
    assert act.tool == tool


class _TextPlanner:
    """LLaVA-Plus texts in turn, parsed as the llava planner does (``followup`` first)."""

    name = "llava_plus_texts"

    def __init__(self, texts: list[str]) -> None:
        self.texts = iter(texts)

    def next(self, state: Any) -> PlannerReply:
        from visagent.planners.llava_plus import followup

        then = followup(list(state.steps), state.tools)
        if then is not None:
            return PlannerReply(decision=then, raw="")
        raw = next(self.texts)
        sizes = {m.id: (m.width, m.height) for m in state.media if m.kind == "image"}
        return PlannerReply(decision=parse_llava_plus(raw, sizes=sizes, tools=state.tools), raw=raw, tokens=1)


def test_grounding_dino_sam_detects_then_segments_with_real_tools(make_agent: Any) -> None:
    # the gradio server sends 'grounding_dino+sam' to the Grounded-SAM worker: boxes and masks of one caption
    call = '"thoughts🤔" find and segment the cup "actions🚀" [{"API_name": "grounding_dino+sam", "API_params": {"image": "<imgpath>", "caption": "cup"}}] "value👉" wait'
    answer_text = '"thoughts🤔" done "actions🚀" [] "value👉" The cup is segmented.'
    planner = _TextPlanner([call, SAM_BATCHED_POINTS, answer_text])
    agent = make_agent(planner, tools=[Detect, Segment], grounding=GroundingPolicy(require_evidence=False))
    answer = agent.ask("Segment the cup.", ["sample:coffee"], max_steps=5)
    tools = [s for s in answer.trace.steps if isinstance(s, ToolStep)]
    assert [t.tool for t in tools] == ["detect", "segment", "segment"]
    det_ids = [d["id"] for d in tools[0].output["detections"]]
    assert det_ids  # the segmentation takes the detections' ids as its boxes: both sets citable
    assert tools[1].args["boxes"] == det_ids
    assert [m["source"] for m in tools[1].output["masks"]] == det_ids
    assert tools[2].tool == "segment" and tools[2].args["point_labels"] == [1, 1, 0]  # batched SAM points ran
    assert not [s for s in answer.trace.steps if isinstance(s, ErrorStep)]
