"""Planner prompts: the exact text the planner sees, tool specs, templates, context truncation."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import Field

from tests.fakes import FakeFind, Noop
from visagent.errors import RunError, UsageError
from visagent.planners.base import PlannerState
from visagent.planners.prompting import (
    PromptOptions,
    build_messages,
    estimate_tokens,
    fit_messages,
    render,
    shown_images,
    text_only,
    tool_specs,
)
from visagent.tools.base import Tool, ToolInput, ToolOutput
from visagent.types import Action, ErrorStep, MediaInfo, PlannerStep, ToolStep

SNAPSHOT = """[system]
You are visagent, a visual assistant. You see the image(s) below and answer questions about them. To look closer, call tools, one per turn, and read their observations. Answer only from what the tools observed, and cite the ids of that evidence.

Tools:
- fake_find(image: str, label: str, threshold?: float = 0.3, n?: int = 2): Find objects by label in an image (fake, for tests).
  threshold: >= 0, <= 1
- noop(i?: int = 0): Do nothing (benchmarks and tests).

Reply with exactly one JSON object and nothing else. Either call a tool (arguments as listed above; "?" marks optional ones):
{"thought": "why this tool", "tool": "NAME", "args": {...}}
or, when the observations answer the question, give the final answer:
{"thought": "what the evidence shows", "final": "the answer", "evidence": ["ID", ...]}
Evidence ids: region ids shown in observations (det_1_0, mask_2_0, ocr_1_3) or obs_N, the whole observation of the N-th tool call. Cite only ids you have seen. Media ids: img_0.
[user]
<image>
Media:
- img_0: image 400x300 px (shown)
Question: How many cups are there?
[assistant]
{"thought": "find cups", "tool": "fake_find", "args": {"image": "img_0", "label": "cup"}}
[user]
obs_1 (fake_find): 2 cup found: det_1_0 'cup' score 0.90 box [0, 0, 200, 150]; det_1_1 'cup' score 0.90 box [1, 1, 200, 150]"""

OBS = "2 cup found: det_1_0 'cup' score 0.90 box [0, 0, 200, 150]; det_1_1 'cup' score 0.90 box [1, 1, 200, 150]"


def _media(n: int = 1) -> list[MediaInfo]:
    return [MediaInfo(id=f"img_{i}", kind="image", source="sample:coffee", width=400, height=300) for i in range(n)]


def _state(n_calls: int = 1, obs: str = OBS, **kw: Any) -> PlannerState:
    steps: list[Any] = []
    for call in range(1, n_calls + 1):
        steps.append(PlannerStep(action=Action(tool="fake_find", args={"image": "img_0", "label": "cup"}, thought="find cups"), raw="x"))
        steps.append(ToolStep(call=call, tool="fake_find", args={}, observation=obs.replace("det_1_", f"det_{call}_"), output={}))
    kw.setdefault("media", _media())
    return PlannerState(question="How many cups are there?", steps=steps, tools={"fake_find": FakeFind, "noop": Noop}, **kw)


def test_prompt_snapshot() -> None:
    assert text_only(build_messages(_state(), PromptOptions(examples=False))) == SNAPSHOT


def test_examples_cover_the_task_kinds() -> None:
    system = build_messages(_state())[0]["content"][0]["text"]
    for kind in ("Counting.", "Localization.", "Reading text.", "Video.", "Counting in a video."):
        assert kind in system
    assert '"tool": "count"' in system and '"evidence": ["det_1_0", "det_1_1"]' in system
    assert '"tool": "track"' in system and '"evidence": ["trk_1_0", "trk_1_1", "trk_1_2"]' in system


class DescribedIn(ToolInput):
    image: str = Field(description="image id, e.g. img_0")
    words: list[str] = Field(min_length=1, max_length=5, description="words to look for")
    level: int = Field(default=3, ge=1, le=9)


class DescribedOut(ToolOutput):
    ok: bool

    def observation(self) -> str:
        return "ok"


class Described(Tool):
    name = "described"
    description = "A tool whose arguments carry descriptions and bounds."
    Input = DescribedIn
    Output = DescribedOut

    def run(self, inp: DescribedIn, ctx: Any) -> DescribedOut:
        return DescribedOut(ok=True)


def test_tool_specs_come_from_input_schema() -> None:
    (spec,) = tool_specs({"described": Described})
    assert spec["signature"] == Described.signature()
    lines = {a["name"]: a["text"] for a in spec["args"]}
    assert lines["image"] == "image id, e.g. img_0"
    assert lines["words"] == "words to look for; min items 1, max items 5"
    assert lines["level"] == ">= 1, <= 9"
    system = build_messages(PlannerState(question="q", media=_media(), steps=[], tools={"described": Described}))[0]
    assert "  words: words to look for; min items 1, max items 5" in system["content"][0]["text"]


def test_templates_are_strict(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(UsageError, match="question"):
        render("user.j2", history=[], media=[], notes=[])
    (tmp_path / "system.j2").write_text("{{ nothing_here }}")
    monkeypatch.setenv("VISAGENT_PROMPTS_DIR", str(tmp_path))
    with pytest.raises(UsageError, match="nothing_here"):
        render("system.j2")
    monkeypatch.setenv("VISAGENT_PROMPTS_DIR", str(tmp_path / "missing"))
    with pytest.raises(UsageError, match="not found"):
        render("system.j2")


def test_history_notes_and_errors_are_rendered() -> None:
    state = _state(history=[{"question": "What is there?", "answer": "two cups", "evidence": ["det_1_1"]}])
    state.steps.append(ErrorStep(source="args", tool="fake_find", message="bad arguments for fake_find: label: missing"))
    text = text_only(build_messages(state, PromptOptions(examples=False)))
    assert "Q1: What is there?\nA1: two cups (evidence: det_1_1)" in text
    assert text.endswith("error (fake_find): bad arguments for fake_find: label: missing")


def test_truncation_levels_keep_question_and_images() -> None:
    long_obs = OBS + " " + "x" * 600
    state = _state(n_calls=6, obs=long_obs, media=_media(2))
    full = estimate_tokens(build_messages(state, level=0))
    least = estimate_tokens(build_messages(state, level=5))
    assert least < full
    seen_levels = []
    for budget in (full, full - 50, (full + least) // 2, least):
        messages, level, tokens = fit_messages(state, estimate_tokens, budget)
        seen_levels.append(level)
        assert tokens <= budget
        text = text_only(messages)
        assert "Question: How many cups are there?" in text
        assert text.count("<image>") == 2
        assert "det_6_1" in text  # the newest observation's ids survive every level
    assert seen_levels[0] == 0 and seen_levels == sorted(seen_levels) and seen_levels[-1] == 5
    lvl1 = text_only(build_messages(state, level=1))
    assert "obs_1 (fake_find): 2 cup found" in lvl1 and "x" * 600 not in lvl1.split("obs_5")[0]
    assert long_obs.replace("det_1_", "det_6_") in lvl1  # recent observations stay whole
    lvl2 = text_only(build_messages(state, level=2))
    assert "obs_1 (fake_find): [shortened to fit the context] ids: det_1_0, det_1_1" in lvl2
    assert "Examples" in lvl2 and "Examples" not in text_only(build_messages(state, level=3))
    with pytest.raises(RunError, match="over the budget"):
        fit_messages(state, estimate_tokens, least - 1)


def test_shown_images_keep_originals_and_newest() -> None:
    media = _media(2) + [
        MediaInfo(id=f"img_{i}", kind="image", source="frame", width=10, height=10, parent="vid_0", timestamp=float(i)) for i in range(2, 9)
    ]
    shown = shown_images(PlannerState(question="q", media=media, steps=[], tools={}), 4)
    assert shown == ["img_0", "img_1", "img_7", "img_8"]


def test_llava_planner_truncates_to_its_context(tiny_config: Any) -> None:
    """A planner model with a short context gets shortened observations, and still acts."""
    from visagent.agent import Agent
    from visagent.planners.llava import LlavaPlanner
    from visagent.pool import ModelPool

    models = dict(tiny_config.models)
    models["planner"] = models["planner"].model_copy(update={"options": {"context_length": 1100}})
    cfg = tiny_config.model_copy(update={"models": models, "planner": tiny_config.planner.model_copy(update={"max_new_tokens": 128})})
    pool = ModelPool()
    planner = LlavaPlanner(cfg, pool=pool)
    plan_state = _state(n_calls=4, obs=OBS + " " + "y" * 400)
    plan_state.images = lambda media_id: __import__("PIL.Image", fromlist=["Image"]).new("RGB", (64, 48))
    reply = planner.next(plan_state)
    assert planner.last_timings["level"] >= 1
    assert planner.last_timings["prompt_tokens"] <= 1100 - 128
    assert reply.raw and reply.tokens > 0
    Agent(cfg, planner=planner, tools=[FakeFind, Noop], pool=pool)  # same planner object can drive an agent
