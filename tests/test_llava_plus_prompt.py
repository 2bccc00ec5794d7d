"""The LLaVA-Plus prompt (planner.format: llava_plus): its conversation, system prompt and the way
its serving code feeds tool results back (llava/serve/gradio_web_server_llava_plus.py in
LLaVA-VL/LLaVA-Plus-Codebase: `f"{api_name} model outputs: {tool_response}\\n\\n"` + "Please summarize
the model outputs and answer my first question: {}")."""

from __future__ import annotations

import ast
from typing import Any

from tests.test_planner_llava_plus import _TextPlanner
from visagent.grounding import GroundingPolicy
from visagent.planners.llava_plus_prompt import build_llava_plus_messages
from visagent.tools.detect import Detect
from visagent.tools.segment import Segment
from visagent.types import PlannerReply

# conv_llava_v1.system in llava/conversation.py (LLaVA-VL/LLaVA-Plus-Codebase)
SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)
QUESTION = "Where is the cup?"
GDINO = ('"thoughts🤔" To find the cup I need to detect it.\n"actions🚀" [{"API_name": "grounding_dino", '
         '"API_params": {"image": "<imgpath>", "caption": "cup"}}]\n"value👉" I will use grounding_dino to help to answer the question.')  # fmt: skip
GSAM = GDINO.replace('"grounding_dino"', '"grounding_dino+sam"')
UNKNOWN = '"thoughts🤔" x\n"actions🚀" [{"API_name": "magic", "API_params": {}}]\n"value👉" wait'
FINAL = '"thoughts🤔" done\n"actions🚀" []\n"value👉" The cup is in the middle.'


class _Recorder(_TextPlanner):
    """Plays LLaVA-Plus texts (follow-ups first, as the llava planner does) and records each prompt."""

    name = "recorder"

    def __init__(self, texts: list[str]) -> None:
        super().__init__(texts)
        self.prompts: list[list[dict[str, Any]]] = []

    def next(self, state: Any) -> PlannerReply:
        self.prompts.append(build_llava_plus_messages(state))
        return super().next(state)


def _text(message: dict[str, Any]) -> str:
    return "".join(p["text"] for p in message["content"] if p["type"] == "text")


def _outputs(text: str, api: str) -> dict[str, Any]:
    head = f"{api} model outputs: "
    assert text.startswith(head), text
    body, tail = text[len(head) :].split("\n\n", 1)
    assert tail == f"Please summarize the model outputs and answer my first question: {QUESTION}"
    return ast.literal_eval(body)  # the Python repr of the output dict, as the server writes it


def test_conversation_and_tool_results_as_llava_plus_serves_them(make_agent: Any) -> None:
    planner = _Recorder([GDINO, FINAL])
    answer = make_agent(planner, tools=[Detect, Segment], grounding=GroundingPolicy(require_evidence=False)).ask(QUESTION, ["sample:coffee"])
    assert answer.ok
    first, second = planner.prompts
    assert [m["role"] for m in first] == ["system", "user"]
    assert _text(first[0]) == SYSTEM
    assert first[1]["content"][0] == {"type": "image", "id": "img_0"} and _text(first[1]) == QUESTION
    assert [m["role"] for m in second] == ["system", "user", "assistant", "user"]
    assert _text(second[2]) == GDINO  # the model's own text, as it wrote it
    out = _outputs(_text(second[3]), "grounding_dino")
    assert set(out) == {"boxes", "logits", "phrases", "ids"}
    assert out["ids"] and len(out["boxes"]) == len(out["logits"]) == len(out["phrases"]) == len(out["ids"])
    assert all(0.0 <= v <= 1.0 and round(v, 2) == v for box in out["boxes"] for v in box)  # normalized xyxy, 2 decimals
    assert set(out["phrases"]) == {"cup"}


def test_grounding_dino_sam_is_one_round_with_both_ids(make_agent: Any) -> None:
    planner = _Recorder([GSAM, FINAL])
    make_agent(planner, tools=[Detect, Segment], grounding=GroundingPolicy(require_evidence=False)).ask(QUESTION, ["sample:coffee"])
    last = planner.prompts[-1]
    assert [m["role"] for m in last] == ["system", "user", "assistant", "user"]
    out = _outputs(_text(last[3]), "grounding_dino+sam")
    assert any(i.startswith("det_") for i in out["ids"]) and any(i.startswith("mask_") for i in out["ids"])
    assert len(out["boxes"]) == len(out["phrases"])  # the detection's boxes, logits and phrases


def test_unknown_api_is_fed_back_in_its_format(make_agent: Any) -> None:
    planner = _Recorder([UNKNOWN, FINAL])
    make_agent(planner, tools=[Detect, Segment], grounding=GroundingPolicy(require_evidence=False)).ask(QUESTION, ["sample:coffee"])
    last = planner.prompts[-1]
    assert [m["role"] for m in last] == ["system", "user", "assistant", "user"]
    assert _text(last[2]) == UNKNOWN
    out = _outputs(_text(last[3]), "visagent")
    assert 'unknown API_name "magic"' in out["message"] and '"grounding_dino"' in out["message"]


def test_llava_planner_uses_the_llava_plus_prompt(tiny_config: Any, shared_pool: Any, monkeypatch: Any) -> None:
    import visagent.planners.llava_plus_prompt as lpp
    from visagent.agent import Agent
    from visagent.planners.llava import LlavaPlanner

    seen: list[Any] = []
    real = lpp.build_llava_plus_messages
    monkeypatch.setattr(lpp, "build_llava_plus_messages", lambda state, n=4: seen.append(real(state, n)) or seen[-1])
    cfg = tiny_config.model_copy(update={"planner": tiny_config.planner.model_copy(update={"format": "llava_plus", "max_new_tokens": 16})})
    answer = Agent(cfg, planner=LlavaPlanner(cfg, pool=shared_pool), tools=[Detect, Segment], pool=shared_pool).ask(QUESTION, ["sample:coffee"], max_steps=2)
    assert len(seen) == 2 and _text(seen[0][0]) == SYSTEM
    # the random model's text is no LLaVA-Plus call: it sees its text, then the error in the outputs shape
    assert [m["role"] for m in seen[1]] == ["system", "user", "assistant", "user"]
    assert _text(seen[1][3]).startswith("visagent model outputs: {'message': ")
    assert answer.status in ("max_steps", "failed")
