"""`visagent convert llava`: original-format LLaVA / LLaVA-Plus checkpoints -> transformers llava."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

_CORPUS = ["USER: How many cups are there? ASSISTANT: there are two cups", '"thoughts" "actions" [] "value" 0 1 2 3']
_VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2, image_size=32, patch_size=8)
_LLAMA = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
              max_position_embeddings=8192, bos_token_id=1, eos_token_id=2)  # fmt: skip


def write_original(folder: Path, tower: Path, save_tower: bool) -> dict[str, Any]:
    """A tiny checkpoint as LlavaLlamaForCausalLM saves it: the Llama fields plus mm_* in
    config.json; weights model.embed_tokens / model.layers / model.norm / lm_head and
    model.mm_projector.0/.2 (and model.vision_tower.vision_tower.* when ``save_tower``); a Llama
    tokenizer without an image token. ``tower``: a local tiny CLIP vision checkpoint (its name)."""
    from safetensors.torch import save_file
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM

    from visagent.tools.tiny.text import tiny_tokenizer

    torch.manual_seed(0)
    if not (tower / "config.json").is_file():
        CLIPVisionModel(CLIPVisionConfig(**_VISION)).save_pretrained(tower)
        CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(tower)
    vision = CLIPVisionModel.from_pretrained(tower).eval()
    tok = tiny_tokenizer("bpe", vocab_size=300, corpus=_CORPUS, template=False, pad="<unk>")  # original LLaVA: pad = unk
    lm = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), **_LLAMA)).eval()
    proj = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.GELU(), torch.nn.Linear(64, 64))
    state = {k: v.contiguous() for k, v in lm.state_dict().items()}
    state.update({f"model.mm_projector.{k}": v for k, v in proj.state_dict().items()})
    if save_tower:
        state.update({f"model.vision_tower.vision_tower.{k}": v for k, v in vision.state_dict().items()})
    folder.mkdir(parents=True, exist_ok=True)
    save_file(state, str(folder / "model.safetensors"))
    cfg = {
        "architectures": ["LlavaLlamaForCausalLM"], "model_type": "llava", "vocab_size": len(tok), "hidden_act": "silu",
        "rms_norm_eps": 1e-6, "torch_dtype": "float32", "use_cache": True, "tie_word_embeddings": False, **_LLAMA,
        "mm_vision_tower": str(tower), "mm_hidden_size": 32, "mm_projector_type": "mlp2x_gelu",
        "mm_vision_select_layer": -2, "mm_vision_select_feature": "patch", "mm_use_im_start_end": False,
        "mm_use_im_patch_token": False, "image_aspect_ratio": "pad", "tune_mm_mlp_adapter": False, "use_mm_proj": True,
    }  # fmt: skip
    (folder / "config.json").write_text(json.dumps(cfg, indent=2))
    tok.save_pretrained(folder)
    return {"lm": lm, "proj": proj, "vision": vision, "tok": tok}


def original_logits(parts: dict[str, Any], pixel_values: Any, before: list[int], after: list[int]) -> Any:
    """The original LLaVA forward: CLIP hidden state of layer -2 without CLS -> projector -> spliced
    between the text embeddings -> Llama."""
    with torch.no_grad():
        feats = parts["vision"](pixel_values, output_hidden_states=True).hidden_states[-2][:, 1:]
        img = parts["proj"](feats)
        emb = parts["lm"].get_input_embeddings()
        embeds = torch.cat([emb(torch.tensor([before])), img, emb(torch.tensor([after]))], dim=1)
        return parts["lm"](inputs_embeds=embeds).logits


@pytest.mark.parametrize("save_tower", [False, True])
def test_converted_logits_equal_the_original_forward(tmp_path: Path, save_tower: bool) -> None:
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from visagent.llava_convert import convert_llava

    parts = write_original(tmp_path / "orig", tmp_path / "clip", save_tower)
    if save_tower:  # the saved weights win over the named tower: break the named one
        import shutil

        shutil.rmtree(tmp_path / "clip")
        from transformers import CLIPVisionConfig, CLIPVisionModel

        torch.manual_seed(7)
        CLIPVisionModel(CLIPVisionConfig(**_VISION)).save_pretrained(tmp_path / "clip")
    dst = convert_llava(tmp_path / "orig", tmp_path / "hf")
    model = LlavaForConditionalGeneration.from_pretrained(dst).eval()
    proc = AutoProcessor.from_pretrained(dst)
    tok = proc.tokenizer
    assert "<image>" in tok.get_vocab() and model.config.image_token_id == tok.convert_tokens_to_ids("<image>")
    assert sorted(model.state_dict())[0].startswith(("lm_head", "model.language_model", "model.multi_modal_projector", "model.vision_tower"))

    before = parts["tok"]("USER: ")["input_ids"]
    after = parts["tok"]("\nHow many cups are there? ASSISTANT:")["input_ids"]
    pixel_values = torch.randn(1, 3, 32, 32)
    n = model.config.image_seq_length
    assert n == 16
    input_ids = torch.tensor([before + [model.config.image_token_id] * n + after])
    with torch.no_grad():
        got = model(input_ids=input_ids, pixel_values=pixel_values).logits
    want = original_logits(parts, pixel_values, before, after)
    vocab = want.shape[-1]
    assert got.shape[-1] > vocab  # the image token was added
    assert torch.allclose(got[..., :vocab], want, atol=1e-5)

    # the processor expands <image> into the image tokens and renders the LLaVA v1 conversation
    prompt = proc.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hi"}]}], add_generation_prompt=True)
    assert prompt.startswith("A chat between a curious human") and prompt.endswith("USER: <image>\nhi ASSISTANT:")
    from PIL import Image

    enc = proc(images=Image.new("RGB", (40, 30)), text=prompt, return_tensors="pt")
    assert int((enc["input_ids"] == model.config.image_token_id).sum()) == n


def test_not_an_original_checkpoint_is_one_line(tmp_path: Path) -> None:
    from visagent.errors import UsageError
    from visagent.llava_convert import convert_llava

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(UsageError, match="not an original-format LLaVA checkpoint") as exc:
        convert_llava(tmp_path, tmp_path / "out")
    assert "\n" not in str(exc.value)


def test_cli_convert_then_ask_with_llava_plus_format(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from visagent.cli import main

    write_original(tmp_path / "orig", tmp_path / "clip", save_tower=False)
    assert main(["convert", "llava", str(tmp_path / "orig"), str(tmp_path / "hf")]) == 0
    assert "models.planner.checkpoint" in capsys.readouterr().out
    monkeypatch.setenv("VISAGENT__models__planner__checkpoint", str(tmp_path / "hf"))
    monkeypatch.setenv("VISAGENT__planner__format", "llava_plus")
    monkeypatch.setenv("VISAGENT__planner__max_new_tokens", "24")
    rc = main(["ask", "sample:coffee", "How many cups are there?", "--profile", "tiny", "--max-steps", "2", "--json"])
    data = json.loads(capsys.readouterr().out)
    assert rc in (0, 1) and data["status"] in ("answered", "max_steps", "failed")
    planner_steps = [s for s in data["trace"]["steps"] if s["type"] == "planner"]
    errors = [s for s in data["trace"]["steps"] if s["type"] == "error"]
    # the converted model loaded and generated (random weights: its text is rarely LLaVA-Plus format)
    planner_errors = [e for e in errors if e["source"] == "planner"]
    assert planner_steps or planner_errors
    assert all(e["message"].startswith("llava_plus:") for e in planner_errors), planner_errors
    assert str(tmp_path / "hf") in data["trace"]["meta"]["planner"]
