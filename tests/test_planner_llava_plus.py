"""LLaVA-Plus output format: parsing realistic model text and mapping it onto visagent tools."""

from __future__ import annotations

from typing import Any

import pytest

from visagent.errors import PlannerOutputError
from visagent.grounding import GroundingPolicy
from visagent.planners import FunctionPlanner, parse_action
from visagent.planners.llava_plus import image_sizes, parse_llava_plus, split_sections
from visagent.types import Action, ErrorStep, Final

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


def test_unknown_api_becomes_error_observation(make_agent: Any) -> None:
    from fakes import FAKE_TOOLS

    texts = iter(['"thoughts🤔" x "actions🚀" [{"API_name": "magic_tool", "API_params": {"x": 1}}] "value👉" wait', FINAL.replace("det_1_0 and det_1_1", "nothing")])
    planner = FunctionPlanner(lambda state: parse_llava_plus(next(texts)))
    answer = make_agent(planner, tools=FAKE_TOOLS, grounding=GroundingPolicy(require_evidence=False)).ask("How many dogs?", ["sample:coffee"])
    err = [s for s in answer.trace.steps if isinstance(s, ErrorStep)][0]
    assert err.source == "tool" and "unknown tool 'magic_tool'" in err.message
    assert answer.ok
