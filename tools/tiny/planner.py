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


# -- tiny checkpoints -----------------------------------------------------------------------------
def build_tiny_tokenizer(folder: Path | None = None, vocab_size: int = 600) -> Any:
    """A byte-level BPE tokenizer trained on a small corpus, as ``PreTrainedTokenizerFast``.

    Special tokens: ``<s>`` (bos), ``</s>`` (eos), ``<pad>``, ``<unk>``, ``<image>``, ``<video>``.
    """

    fast = tiny_tokenizer("bpe", 
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


def _tiny_text_config(vocab: int, pad: int) -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        pad_token_id=pad,
        bos_token_id=1,
        eos_token_id=2,
    )


def _tiny_vision_config(image_size: int = 32) -> Any:
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=8,
        projection_dim=32,
    )


def _save_tiny_llava(model: Any, processor: Any, tok: Any, folder: Path) -> None:
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.save_pretrained(folder)
    processor.save_pretrained(folder)


@register_tiny("llava")
def build_tiny_llava(folder: Path) -> None:
    """Tiny LLaVA-1.5: CLIP ViT (32 px, 8 px patches -> 16 image tokens) + 2-layer Llama."""
    import torch
    from transformers import (
        CLIPImageProcessor,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    tok = build_tiny_tokenizer()
    image_id = tok.convert_tokens_to_ids("<image>")
    config = LlavaConfig(
        vision_config=_tiny_vision_config(),
        text_config=_tiny_text_config(len(tok), tok.pad_token_id),
        image_token_id=image_id,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        image_seq_length=16,
        projector_hidden_act="gelu",
    )
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config).eval()
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tok,
        patch_size=8,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=LLAVA_CHAT_TEMPLATE,
    )
    _save_tiny_llava(model, processor, tok, folder)


@register_tiny("llava-next")
def build_tiny_llava_next(folder: Path) -> None:
    """Tiny LLaVA-NeXT: any-resolution tiles of 32 px over a CLIP ViT + 2-layer Llama."""
    import torch
    from transformers import (
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaNextImageProcessor,
        LlavaNextProcessor,
    )

    tok = build_tiny_tokenizer()
    pinpoints = [[32, 32], [32, 64], [64, 32], [64, 64]]
    config = LlavaNextConfig(
        vision_config=_tiny_vision_config(),
        text_config=_tiny_text_config(len(tok), tok.pad_token_id),
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        image_grid_pinpoints=pinpoints,
        image_seq_length=16,
    )
    torch.manual_seed(0)
    model = LlavaNextForConditionalGeneration(config).eval()
    image_processor = LlavaNextImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, image_grid_pinpoints=pinpoints
    )
    processor = LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=tok,
        patch_size=8,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=LLAVA_CHAT_TEMPLATE,
    )
    _save_tiny_llava(model, processor, tok, folder)


@register_tiny("llava-onevision")
def build_tiny_llava_onevision(folder: Path) -> None:
    """Tiny LLaVA-OneVision: SigLIP vision tower (32 px tiles) + 2-layer Qwen2, any-resolution."""
    import torch
    from transformers import (
        LlavaOnevisionConfig,
        LlavaOnevisionForConditionalGeneration,
        LlavaOnevisionImageProcessor,
        LlavaOnevisionProcessor,
        LlavaOnevisionVideoProcessor,
        Qwen2Config,
        SiglipVisionConfig,
    )

    tok = build_tiny_tokenizer()
    pinpoints = [[32, 32], [32, 64], [64, 32], [64, 64]]
    vision = SiglipVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8
    )
    text = Qwen2Config(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        pad_token_id=tok.pad_token_id,
        bos_token_id=1,
        eos_token_id=2,
    )
    config = LlavaOnevisionConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        video_token_id=tok.convert_tokens_to_ids("<video>"),
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
        image_grid_pinpoints=pinpoints,
    )
    torch.manual_seed(0)
    model = LlavaOnevisionForConditionalGeneration(config).eval()
    size = {"height": 32, "width": 32}
    processor = LlavaOnevisionProcessor(
        image_processor=LlavaOnevisionImageProcessor(size=size, image_grid_pinpoints=pinpoints),
        tokenizer=tok,
        video_processor=LlavaOnevisionVideoProcessor(size=size),
        num_image_tokens=16,
        vision_feature_select_strategy="full",
        chat_template=LLAVA_CHAT_TEMPLATE,
    )
    _save_tiny_llava(model, processor, tok, folder)
