"""Tiny random checkpoints for ``visagent.tools.planner_models`` (same architectures, random weights, fixed seed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from visagent.tools.models import register_tiny
from visagent.tools.planner_models import LLAVA_CHAT_TEMPLATE
from visagent.tools.tiny.text import tiny_tokenizer

_CORPUS = [
    'USER: <image>\nHow many cups are there? ASSISTANT: {"thought": "count the cups", "tool": "count", "args": {"image": "img_0", "label": "cup"}}',
    '{"thought": "I can answer", "final": "There is 1 cup.", "evidence": ["det_1_0", "obs_1"]}',
    "detect segment count caption vqa ocr search video frames image labels label boxes points point_labels threshold",
    "thought tool args final evidence answer question observation error img_0 img_1 vid_0 det_1_0 mask_2_0 ocr_1_0",
    "The quick brown fox jumps over the lazy dog. Where is the cat? What does the sign say? Read the text.",
    "0 1 2 3 4 5 6 7 8 9 10 0.5 0.35 0.25 true false null [ ] { } , : \" ' ( ) . - _ / \\n",
    "You are a visual assistant. Call one tool at a time, then answer with the ids of the evidence.",
]


def build_tiny_tokenizer(folder: Path | None = None, vocab_size: int = 600) -> Any:
    """A byte-level BPE tokenizer trained on a small corpus, as ``PreTrainedTokenizerFast``.

    Special tokens: ``<s>`` (bos), ``</s>`` (eos), ``<pad>``, ``<unk>``, ``<image>``, ``<video>``.
    """
    fast = tiny_tokenizer(
        "bpe",
        vocab_size=vocab_size,
        corpus=_CORPUS,
        named_extra={"image_token": "<image>", "video_token": "<video>"},
        template=False,
        model_max_length=1_000_000_000,  # the planner's context comes from its model config
    )
    fast.chat_template = LLAVA_CHAT_TEMPLATE
    if folder is not None:
        fast.save_pretrained(folder)
    return fast


#: the text model of every tiny planner (Llama or Qwen2 layout)
_TEXT = dict(
    hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
    max_position_embeddings=4096, bos_token_id=1, eos_token_id=2,
)  # fmt: skip
#: the vision tower of every tiny planner: 32 px, 8 px patches -> 16 image tokens
_VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8)
_PINPOINTS = [[32, 32], [32, 64], [64, 32], [64, 64]]
_CLIP_PROCESSOR = dict(patch_size=8, vision_feature_select_strategy="default", num_additional_image_tokens=1)


def _build(
    folder: Path,
    arch: str,
    *,
    vision: str,
    text: str,
    config: dict[str, Any],
    image_processor: Any,
    processor: dict[str, Any],
) -> None:
    """Save a tiny ``<arch>ForConditionalGeneration`` + ``<arch>Processor`` (transformers class-name
    prefix ``arch``) with the shared tokenizer, text model (``text``: its config class) and vision
    tower (``vision``: its config class) into ``folder``."""
    import torch
    import transformers

    tok = build_tiny_tokenizer()
    vision_cfg = getattr(transformers, vision)(**_VISION, **({"projection_dim": 32} if vision == "CLIPVisionConfig" else {}))
    text_cfg = getattr(transformers, text)(vocab_size=len(tok), pad_token_id=tok.pad_token_id, **_TEXT)
    ids = {"image_token_id": tok.convert_tokens_to_ids("<image>")}
    if arch == "LlavaOnevision":
        ids["video_token_id"] = tok.convert_tokens_to_ids("<video>")
    cfg = getattr(transformers, f"{arch}Config")(vision_config=vision_cfg, text_config=text_cfg, **ids, **config)
    torch.manual_seed(0)
    model = getattr(transformers, f"{arch}ForConditionalGeneration")(cfg).eval()
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.save_pretrained(folder)
    proc_cls = getattr(transformers, f"{arch}Processor")
    proc_cls(image_processor=image_processor, tokenizer=tok, chat_template=LLAVA_CHAT_TEMPLATE, **processor).save_pretrained(folder)


@register_tiny("llava")
def build_tiny_llava(folder: Path) -> None:
    """Tiny LLaVA-1.5: CLIP ViT (32 px, 8 px patches -> 16 image tokens) + 2-layer Llama."""
    from transformers import CLIPImageProcessor

    _build(
        folder, "Llava", vision="CLIPVisionConfig", text="LlamaConfig",
        config=dict(vision_feature_layer=-2, vision_feature_select_strategy="default", image_seq_length=16, projector_hidden_act="gelu"),
        image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
        processor=_CLIP_PROCESSOR,
    )  # fmt: skip


@register_tiny("llava-next")
def build_tiny_llava_next(folder: Path) -> None:
    """Tiny LLaVA-NeXT: any-resolution tiles of 32 px over a CLIP ViT + 2-layer Llama."""
    from transformers import LlavaNextImageProcessor

    _build(
        folder, "LlavaNext", vision="CLIPVisionConfig", text="LlamaConfig",
        config=dict(vision_feature_layer=-2, vision_feature_select_strategy="default", image_grid_pinpoints=_PINPOINTS, image_seq_length=16),
        image_processor=LlavaNextImageProcessor(
            size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, image_grid_pinpoints=_PINPOINTS
        ),
        processor=_CLIP_PROCESSOR,
    )  # fmt: skip


@register_tiny("llava-onevision")
def build_tiny_llava_onevision(folder: Path) -> None:
    """Tiny LLaVA-OneVision: SigLIP vision tower (32 px tiles) + 2-layer Qwen2, any-resolution."""
    from transformers import LlavaOnevisionImageProcessor, LlavaOnevisionVideoProcessor

    size = {"height": 32, "width": 32}
    _build(
        folder, "LlavaOnevision", vision="SiglipVisionConfig", text="Qwen2Config",
        config=dict(vision_feature_layer=-1, vision_feature_select_strategy="full", image_grid_pinpoints=_PINPOINTS),
        image_processor=LlavaOnevisionImageProcessor(size=size, image_grid_pinpoints=_PINPOINTS),
        processor=dict(video_processor=LlavaOnevisionVideoProcessor(size=size), num_image_tokens=16, vision_feature_select_strategy="full"),
    )  # fmt: skip
