"""caption / vqa on tiny random checkpoints of every supported architecture (BLIP, BLIP-2,
InstructBLIP, GIT), loaded with ``from_pretrained`` through the tools' loaders."""

from __future__ import annotations

import shutil

import pytest

from tests.helpers import error_steps, tool_steps
from visagent.config import load_config


def _config(tiny_config, **models):
    """The tiny profile with some model families pointed elsewhere."""
    return load_config(
        profile="tiny",
        overrides={"cache_dir": tiny_config.cache_dir, "models": {f: {"checkpoint": c} for f, c in models.items()}},
        environ={},
    )


def _agent(config, pool, plan):
    from visagent.agent import Agent
    from visagent.planners import ScriptedPlanner

    return Agent(config, planner=ScriptedPlanner(plan), pool=pool)




def test_caption_and_vqa_blip_through_the_agent(make_agent):
    plan = [
        {"tool": "caption", "args": {"image": "img_0"}},
        {"tool": "caption", "args": {"image": "img_0", "prompt": "a photography of"}},
        {"tool": "vqa", "args": {"image": "img_0", "question": "What color is the cup?"}},
        {"final": "a cup", "evidence": ["obs_1", "obs_3"]},
    ]
    ans = make_agent(plan).ask("Describe the image.", ["sample:coffee"])
    assert ans.ok, ans.error
    cap, prefixed, vqa = tool_steps(ans)
    assert cap.tool == "caption" and isinstance(cap.output["caption"], str)
    assert cap.observation.startswith("caption of img_0: ") and len(cap.observation) <= 500
    assert cap.models == ["tiny:blip"]
    # BLIP continues the text prefix: the caption starts with it
    assert prefixed.output["caption"].startswith("a photography of")
    assert prefixed.output["prompt"] == "a photography of"
    assert vqa.output["question"] == "What color is the cup?" and isinstance(vqa.output["answer"], str)
    assert vqa.models == ["tiny:blip-vqa"]
    assert "Q: What color is the cup? A: " in vqa.observation
    assert [e.id for e in ans.evidence] == ["obs_1", "obs_3"]


@pytest.mark.parametrize(
    "tiny, kind, model_cls",
    [
        ("tiny:blip", "blip", "BlipForConditionalGeneration"),
        ("tiny:blip2", "blip-2", "Blip2ForConditionalGeneration"),
        ("tiny:instructblip", "instructblip", "InstructBlipForConditionalGeneration"),
        ("tiny:git", "git", "GitForCausalLM"),
    ],
)
def test_caption_architectures(tiny_config, shared_pool, tiny, kind, model_cls):
    config = _config(tiny_config, caption=tiny, vqa=tiny if kind != "blip" else "tiny:blip-vqa")
    plan = [
        {"tool": "caption", "args": {"image": "img_0"}},
        {"tool": "vqa", "args": {"image": "img_0", "question": "how many cups?"}},
        {"final": "done", "evidence": ["obs_1"]},
    ]
    ans = _agent(config, shared_pool, plan).ask("q", ["sample:coffee"])
    assert ans.ok, ans.error
    assert not error_steps(ans), error_steps(ans)
    cap, vqa = tool_steps(ans)
    assert cap.models == [tiny] and isinstance(cap.output["caption"], str)
    assert isinstance(vqa.output["answer"], str)
    from visagent.context import Models

    with Models(config, shared_pool).use("caption") as bundle:
        assert bundle.kind == kind and type(bundle.model).__name__ == model_cls
        # generation is capped by max_new_tokens (default 30 for captions)
        assert len(bundle.processor.tokenizer(cap.output["caption"], add_special_tokens=False).input_ids) <= 30


def test_architecture_comes_from_the_config_not_the_name(tiny_config, tmp_path):
    """A GIT checkpoint in a folder named like BLIP-2 still loads as GIT."""
    import torch

    from visagent.checkpoints import ensure_tiny
    from visagent.tools.caption import load_captioner

    src = ensure_tiny("git", "transformers", tiny_config.cache_path)
    misleading = tmp_path / "blip2-opt-2.7b"
    shutil.copytree(src, misleading)
    bundle = load_captioner(str(misleading), "cpu", torch.float32, {}, "caption")
    assert bundle.kind == "git" and type(bundle.model).__name__ == "GitForCausalLM"


def test_wrong_checkpoints_are_clear_errors(tiny_config, shared_pool):
    import torch

    from visagent.checkpoints import ensure_tiny
    from visagent.errors import ToolError
    from visagent.tools.caption import load_captioner

    blip_caption = ensure_tiny("blip", "transformers", tiny_config.cache_path)
    with pytest.raises(ToolError, match="BlipForQuestionAnswering"):
        load_captioner(str(blip_caption), "cpu", torch.float32, {}, "vqa")
    detector = ensure_tiny("grounding-dino", "transformers", tiny_config.cache_path)
    with pytest.raises(ToolError, match="model_type 'grounding-dino'; supported: blip, blip-2, instructblip, git"):
        load_captioner(str(detector), "cpu", torch.float32, {}, "caption")


def test_bad_arguments_are_error_observations(make_agent):
    plan = [
        {"tool": "vqa", "args": {"image": "img_0", "question": "   "}},
        {"tool": "caption", "args": {"image": "img_7"}},
        {"tool": "caption", "args": {"image": "img_0", "style": "long"}},
        {"final": "no", "evidence": []},
    ]
    ans = make_agent(plan).ask("q", ["sample:coffee"])
    errors = error_steps(ans)
    assert len(errors) == 3 and not tool_steps(ans)
    assert "question must not be empty" in errors[0].message
    assert errors[1].source == "tool" and "img_7" in errors[1].message
    assert errors[2].source == "args" and "style" in errors[2].message


def test_max_new_tokens_option(tiny_config, shared_pool):
    config = _config(tiny_config, caption="tiny:git")
    config.models["caption"].options["max_new_tokens"] = 3
    from visagent.pool import ModelPool

    ans = _agent(config, ModelPool(), [{"tool": "caption", "args": {"image": "img_0"}}, {"final": "x", "evidence": []}]).ask(
        "q", ["sample:chelsea"]
    )
    (cap,) = tool_steps(ans)
    from visagent.tools.tiny.text import tiny_tokenizer

    assert len(tiny_tokenizer("wordpiece")(cap.output["caption"], add_special_tokens=False).input_ids) <= 3
