"""The LLaVA planner on tiny random LLaVA checkpoints: constrained actions are always valid."""

from __future__ import annotations

import json
import re
from typing import Any, Literal

import pytest
from pydantic import BaseModel, Field

from tests.fakes import FAKE_TOOLS
from visagent.agent import Agent
from visagent.errors import PlannerOutputError
from visagent.grounding import NEEDS_TOOLS_RE, NO_EVIDENCE, final_rules
from visagent.planners import make_planner, parse_action
from visagent.planners.constrain import action_schema, validate_action
from visagent.planners.llava import LlavaPlanner
from visagent.tools.base import Prob, Region, Tool, ToolInput, ToolOutput
from visagent.types import Action, ErrorStep, Final, PlannerStep, ToolStep


class Crop(BaseModel):
    box: list[float] = Field(min_length=4, max_length=4)
    pad: int = Field(default=0, ge=0, le=50)


class ZoomIn(ToolInput):
    image: str = Field(description="image id")
    crops: list[Crop] = Field(min_length=1, description="regions to zoom into")
    mode: Literal["fast", "best"] = "fast"
    scale: float = Field(default=2.0, gt=1.0, le=8.0)
    note: str | None = Field(default=None, min_length=1)
    threshold: Prob = 0.5


class ZoomOut(ToolOutput):
    zooms: list[Region]

    def observation(self) -> str:
        return "zoomed: " + "; ".join(r.describe() for r in self.zooms)


class Zoom(Tool):
    name = "zoom"
    description = "Zoom into boxes of an image (fake, for tests)."
    Input = ZoomIn
    Output = ZoomOut

    def run(self, inp: ZoomIn, ctx: Any) -> ZoomOut:
        w, h = ctx.image(inp.image).size
        return ZoomOut(zooms=[Region(id=ctx.region_id("det", i), image=inp.image, box=[0, 0, w, h]) for i in range(len(inp.crops))])


# echo is left out: its `sleep` argument would let a random model stall the run
TOOLS = [t for t in FAKE_TOOLS if t.name != "echo"] + [Zoom]
QUESTIONS = ["How many cups are there?", "Where is the spoon?", "Zoom into the saucer and describe it."]


def _config(tiny_config: Any, **planner: Any) -> Any:
    return tiny_config.model_copy(update={"planner": tiny_config.planner.model_copy(update=planner)})


def _check_run(answer: Any, tools: dict[str, type[Tool]], max_steps: int) -> int:
    """Every planner step of the run is a schema-valid action; returns the number of steps."""
    planner_steps = [s for s in answer.trace.steps if isinstance(s, PlannerStep)]
    assert planner_steps, "the planner made no step"
    assert not [s for s in answer.trace.steps if isinstance(s, ErrorStep) and s.source in ("planner", "args")]
    # the grammar never offers a final that the evidence check would send back
    assert not [s for s in answer.trace.steps if isinstance(s, ErrorStep) and s.message.startswith(NO_EVIDENCE)]
    known: list[str] = []
    n = 0
    for step in answer.trace.steps:
        if isinstance(step, PlannerStep):
            n += 1
            obj = json.loads(step.raw, strict=False)
            schema = action_schema(tools, known_ids=known, media={"image": ["img_0"], "video": []})
            assert validate_action(obj, schema) == [], step.raw
            if isinstance(step.action, Action):
                tools[step.action.tool].Input.model_validate(step.action.args)
            else:
                assert set(step.action.evidence) <= set(known)
                assert step.action.evidence or not known, step.raw  # cite when there is something to cite
                if n < max_steps:  # and, before the last step, answer a question that needs tools only after a tool ran
                    assert known or not NEEDS_TOOLS_RE.search(answer.trace.meta.question), step.raw
            assert step.tokens > 0
        elif isinstance(step, ToolStep):
            known += [r for r in _region_ids(step.output)] + [f"obs_{step.call}"]
    assert len(planner_steps) <= max_steps
    assert answer.status in ("answered", "max_steps")
    return len(planner_steps)


def _region_ids(output: Any) -> list[str]:
    from visagent.render import iter_regions

    return [r["id"] for r in iter_regions(output)]


def test_constrained_tiny_llava_always_valid(tiny_config: Any, shared_pool: Any) -> None:
    tools = {t.name: t for t in TOOLS}
    steps = 0
    finals = actions = 0
    for seed in range(6):
        cfg = _config(tiny_config, temperature=1.0, seed=seed)
        agent = Agent(cfg, planner=LlavaPlanner(cfg, pool=shared_pool), tools=TOOLS, pool=shared_pool)
        for question in QUESTIONS:
            answer = agent.ask(question, ["sample:coffee"], max_steps=3)
            steps += _check_run(answer, tools, 3)
            for s in answer.trace.steps:
                if isinstance(s, PlannerStep):
                    finals += isinstance(s.action, Final)
                    actions += isinstance(s.action, Action)
    assert steps >= 18
    assert actions > 0  # sampling reaches tool calls, not only finals


def test_greedy_is_deterministic_and_recorded(tiny_config: Any, shared_pool: Any) -> None:
    agent = Agent(tiny_config, planner="llava", tools=TOOLS, pool=shared_pool)
    a = agent.ask("How many cups are there?", ["sample:coffee"], max_steps=2)
    b = agent.ask("How many cups are there?", ["sample:coffee"], max_steps=2)
    raw_a = [s.raw for s in a.trace.steps if isinstance(s, PlannerStep)]
    raw_b = [s.raw for s in b.trace.steps if isinstance(s, PlannerStep)]
    assert raw_a == raw_b and raw_a[0]
    assert a.trace.meta.seed == tiny_config.planner.seed
    assert a.trace.meta.planner.startswith("llava:tiny:llava")
    assert isinstance(agent.planner, LlavaPlanner)
    assert agent.planner.pool is shared_pool  # the agent's pool serves the planner model


def test_unconstrained_random_model_is_not_valid_json(tiny_config: Any, shared_pool: Any) -> None:
    # without the constraint the random model's text is no action: the loop records planner errors
    cfg = _config(tiny_config, constrained=False, max_new_tokens=24)
    agent = Agent(cfg, planner=LlavaPlanner(cfg, pool=shared_pool), tools=TOOLS, pool=shared_pool)
    answer = agent.ask("How many cups are there?", ["sample:coffee"], max_steps=2)
    errors = [s for s in answer.trace.steps if isinstance(s, ErrorStep) and s.source == "planner"]
    assert errors and answer.status in ("failed", "max_steps")
    with pytest.raises(PlannerOutputError):
        parse_action(errors[0].args["raw"] if errors[0].args else "")


@pytest.mark.parametrize("checkpoint", ["tiny:llava-next", "tiny:llava-onevision"])
def test_other_llava_architectures(checkpoint: str, tiny_config: Any, shared_pool: Any) -> None:
    models = dict(tiny_config.models)
    models["planner"] = models["planner"].model_copy(update={"checkpoint": checkpoint})
    cfg = tiny_config.model_copy(update={"models": models, "planner": tiny_config.planner.model_copy(update={"temperature": 1.0, "seed": 3})})
    planner = make_planner("llava", cfg, pool=shared_pool)
    answer = Agent(cfg, planner=planner, tools=TOOLS, pool=shared_pool).ask("Where is the spoon?", ["sample:coffee"], max_steps=2)
    _check_run(answer, {t.name: t for t in TOOLS}, 2)
    stats = {m["checkpoint"]: m for m in shared_pool.stats()["models"]}
    assert checkpoint in stats
    assert answer.trace.meta.planner == f"llava:{checkpoint}"


def test_planner_checkpoint_of_another_architecture_is_refused(tiny_config: Any) -> None:
    from visagent.checkpoints import ensure_tiny
    from visagent.errors import UsageError
    from visagent.tools.planner_models import load_planner

    blip = ensure_tiny("blip", "transformers", tiny_config.cache_path)
    with pytest.raises(UsageError, match=r"model_type 'blip'; supported: llava, .*any_architecture: true"):
        load_planner(str(blip), "cpu", None, {})


def test_action_schema_bounds_and_ids() -> None:
    tools = {t.name: t for t in TOOLS}
    schema = action_schema(tools, known_ids=["det_1_0", "obs_1"], media={"image": ["img_0", "img_1"]})
    options = schema["anyOf"]
    assert [o["properties"].get("tool", {}).get("const") for o in options] == ["fake_find", "noop", "zoom", None]
    zoom = options[2]["properties"]["args"]
    assert zoom["properties"]["image"] == {"enum": ["img_0", "img_1"]}
    assert zoom["properties"]["crops"]["items"]["properties"]["pad"]["maximum"] == 50  # $ref inlined
    assert zoom["properties"]["mode"]["enum"] == ["fast", "best"]
    assert zoom["additionalProperties"] is False
    final = options[-1]["properties"]["evidence"]
    assert final["items"] == {"enum": ["det_1_0", "obs_1"]}
    good = {"thought": "x", "tool": "zoom", "args": {"image": "img_0", "crops": [{"box": [1, 2, 3, 4]}]}}
    assert validate_action(good, schema) == []
    bad = {"thought": "x", "tool": "zoom", "args": {"image": "img_9", "crops": [{"box": [1, 2, 3, 4]}], "scale": 9}}
    assert len(validate_action(bad, schema)) >= 1
    assert validate_action({"thought": "", "final": "y", "evidence": ["det_9_9"]}, schema)
    no_ids = action_schema({}, known_ids=[])
    assert no_ids["properties"]["evidence"]["maxItems"] == 0
    many = action_schema({}, known_ids=[f"det_1_{i}" for i in range(500)])
    assert "pattern" in many["properties"]["evidence"]["items"]  # too many to list: the id shape
    assert validate_action({"thought": "", "final": "y", "evidence": ["det_1_499"]}, many) == []
    assert validate_action({"thought": "", "final": "y", "evidence": ["img_0"]}, many)
    cite = action_schema({}, known_ids=["obs_1"], require_evidence=True)
    assert validate_action({"thought": "", "final": "y", "evidence": []}, cite)
    assert validate_action({"thought": "", "final": "y", "evidence": ["obs_1"]}, cite) == []
    assert all("final" not in o["properties"] for o in action_schema(tools, allow_final=False)["anyOf"])


def test_final_rules_follow_the_evidence_check() -> None:
    from visagent.planners.base import PlannerState

    def state(question: str, steps: list[Any], step: int = 0) -> PlannerState:
        return PlannerState(question=question, media=[], steps=steps, tools={}, max_steps=3, step=step)

    plan = PlannerStep(index=0, action=Final(answer="x", evidence=[]))
    sent_back = ErrorStep(index=1, source="final", message=NO_EVIDENCE + ": call a tool first")
    assert final_rules(state("How many cups?", []), []) == (False, False)  # call a tool first
    assert final_rules(state("Describe the picture.", []), []) == (True, False)
    assert final_rules(state("How many cups?", []), ["obs_1"]) == (True, True)  # must cite
    assert final_rules(state("How many cups?", [plan, sent_back]), []) == (True, False)  # sent back once
    assert final_rules(state("How many cups?", [plan], step=2), ["obs_1"]) == (True, True)  # last step: still cite
    assert final_rules(state("How many cups?", [plan], step=2), []) == (True, False)  # nothing to cite: answer


def test_citable_ids_from_the_session_and_this_turn(make_agent: Any) -> None:
    """The loop fills PlannerState.citable: earlier turns' regions, this turn's regions and obs_N."""
    from visagent.planners import FunctionPlanner

    seen: list[list[str]] = []
    replies = iter(
        [
            {"tool": "fake_find", "args": {"image": "img_0", "label": "cup"}},
            {"final": "2", "evidence": ["det_1_0"]},
            {"tool": "fake_find", "args": {"image": "img_0", "label": "mug", "n": 1}},
            {"final": "1", "evidence": ["det_2_0", "det_1_1"]},
        ]
    )

    def plan(state: Any) -> Any:
        seen.append(list(state.citable))
        return next(replies)

    conv = make_agent(FunctionPlanner(plan), tools=FAKE_TOOLS).chat(["sample:coffee"])
    assert conv.ask("How many cups?").ok and conv.ask("And mugs?").ok
    assert seen[0] == [] and seen[1] == ["det_1_0", "det_1_1", "obs_1"]
    assert seen[2] == ["det_1_0", "det_1_1"]  # obs_N belong to their turn; regions stay
    assert seen[3] == ["det_1_0", "det_1_1", "det_2_0", "obs_2"]


@pytest.mark.parametrize("seed", [None, 1, 2, 3])
def test_cli_ask_tiny_end_to_end(seed: int | None, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """`visagent ask sample:coffee "How many cups are there?" --profile tiny` with the built-in
    tools: greedy (seed None) and sampled runs; every planner step is a schema-valid action."""
    from visagent.cli import main
    from visagent.registry import load_builtin_tools

    if seed is not None:
        monkeypatch.setenv("VISAGENT__planner__temperature", "1.0")
        monkeypatch.setenv("VISAGENT__planner__seed", str(seed))
    rc = main(["ask", "sample:coffee", "How many cups are there?", "--profile", "tiny", "--max-steps", "4", "--json"])
    data = json.loads(capsys.readouterr().out)
    assert rc == (0 if data["status"] == "answered" else 1)
    assert data["status"] in ("answered", "max_steps")
    tools = load_builtin_tools()
    known: list[str] = []
    for step in data["trace"]["steps"]:
        if step["type"] == "planner":
            schema = action_schema(tools, known_ids=known, media={"image": ["img_0"], "video": []})
            assert validate_action(json.loads(step["raw"], strict=False), schema) == [], step["raw"]
        elif step["type"] == "tool":
            known += _region_ids(step["output"]) + [f"obs_{step['call']}"]
        elif step["type"] == "error":
            assert step["source"] not in ("planner",), step["message"]
    assert data["trace"]["meta"]["planner"] == "llava:tiny:llava"


def test_sampled_runs_replay_from_the_recorded_seed(tiny_config: Any, shared_pool: Any) -> None:
    def run(seed: int) -> tuple[list[str], Any, LlavaPlanner]:
        cfg = _config(tiny_config, temperature=1.0, seed=seed)
        planner = LlavaPlanner(cfg, pool=shared_pool)
        answer = Agent(cfg, planner=planner, tools=TOOLS, pool=shared_pool).ask(QUESTIONS[1], ["sample:coffee"], max_steps=3)
        return [s.raw for s in answer.trace.steps if isinstance(s, PlannerStep)], answer, planner

    raws, answer, planner = run(11)
    again, _, _ = run(11)
    other, _, _ = run(12)
    assert raws == again and raws != other
    last = [s for s in answer.trace.steps if isinstance(s, PlannerStep)][-1]
    assert planner.last_timings["seed"] == answer.trace.meta.seed + last.index == 11 + last.index


@pytest.mark.parametrize("checkpoint", ["tiny:llava", "tiny:llava-next", "tiny:llava-onevision"])
def test_every_tiny_planner_finishes_its_actions_at_the_default_budget(checkpoint: str, tiny_config: Any, shared_pool: Any) -> None:
    models = dict(tiny_config.models)
    models["planner"] = models["planner"].model_copy(update={"checkpoint": checkpoint})
    cfg = tiny_config.model_copy(update={"models": models})
    assert cfg.planner.max_new_tokens == 256  # the default budget
    answer = Agent(cfg, planner=make_planner("llava", cfg, pool=shared_pool), pool=shared_pool).ask(
        "How many cups are there?", ["sample:coffee"], max_steps=3
    )
    errors = [s for s in answer.trace.steps if isinstance(s, ErrorStep) and s.source in ("planner", "args")]
    assert not errors, [e.message for e in errors]
    planner_steps = [s for s in answer.trace.steps if isinstance(s, PlannerStep)]
    assert planner_steps and all(0 < s.tokens < cfg.planner.max_new_tokens for s in planner_steps)
    assert answer.status in ("answered", "max_steps")


def test_action_schema_fits_the_token_budget_and_the_media() -> None:
    from visagent.planners.constrain import max_chars
    from visagent.registry import load_builtin_tools

    tools = load_builtin_tools()
    full = action_schema(tools, known_ids=["obs_1"], media={"image": ["img_0"], "video": []})
    fitted = action_schema(tools, known_ids=["obs_1"], media={"image": ["img_0"], "video": []}, max_bytes=255)
    assert max_chars(full) > 255 >= max(max_chars(o) for o in fitted["anyOf"])
    names = {o["properties"]["tool"]["const"] for o in fitted["anyOf"] if "tool" in o["properties"]}
    assert "detect" in names and "video_frames" not in names  # no video: video tools are not on offer
    video_only = action_schema(tools, media={"image": [], "video": ["vid_0"]}, max_bytes=255)
    offered = {o["properties"]["tool"]["const"]: o for o in video_only["anyOf"] if "tool" in o["properties"]}
    assert "video_frames" in offered and "detect" not in offered and "segment" not in offered
    assert offered["video_frames"]["properties"]["args"]["properties"]["video"] == {"enum": ["vid_0"]}
    if "search" in offered:  # its optional image-id list is left out until an image exists
        assert "images" not in offered["search"]["properties"]["args"]["properties"]


def test_video_only_run_uses_only_existing_image_ids(tiny_config: Any, shared_pool: Any) -> None:
    from pathlib import Path

    video = str(Path(__file__).resolve().parents[1] / "scenarios" / "media" / "moving_square.mp4")
    cfg = _config(tiny_config, temperature=1.0, seed=1)
    answer = Agent(cfg, planner=make_planner("llava", cfg, pool=shared_pool), pool=shared_pool).ask(
        "What moves in this video?", [video], max_steps=4
    )
    existing = {"vid_0"}
    actions = 0
    for step in answer.trace.steps:
        if isinstance(step, PlannerStep) and isinstance(step.action, Action):
            actions += 1
            args = step.action.args
            for key in ("image", "video"):
                if key in args:
                    assert args[key] in existing, (key, args[key], sorted(existing))
            for i in args.get("images") or []:
                assert i in existing
        elif isinstance(step, ToolStep):
            existing |= set(re.findall(r"\bimg_\d+\b", step.observation + json.dumps(step.output)))
    assert actions and not [s for s in answer.trace.steps if isinstance(s, ErrorStep) and s.source in ("planner", "args")]
