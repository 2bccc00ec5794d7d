"""Tiny random checkpoints for ``visagent.tools.video`` (same architectures, random weights, fixed seed)."""

from __future__ import annotations

from pathlib import Path

from visagent.tools.models import register_tiny
from visagent.tools.tiny.text import tiny_tokenizer


@register_tiny("video-llava")
def build_tiny_video_llava(folder: Path) -> None:
    """Tiny random Video-LLaVA (CLIP vision tower 28 px / patch 14, 2-layer Llama) + processor
    with a byte-level BPE tokenizer holding ``<image>`` and ``<video>``."""
    import torch
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        VideoLlavaConfig,
        VideoLlavaForConditionalGeneration,
        VideoLlavaImageProcessor,
        VideoLlavaProcessor,
        VideoLlavaVideoProcessor,
    )  # fmt: skip

    torch.manual_seed(0)
    tok = tiny_tokenizer("bpe", extra=("<image>", "<video>"), add_eos=False)
    size, patch = 28, 14
    small = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4)
    vision = CLIPVisionConfig(image_size=size, patch_size=patch, projection_dim=32, **small)
    text = LlamaConfig(
        vocab_size=len(tok), num_key_value_heads=2, max_position_embeddings=512, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **small,
    )  # fmt: skip
    config = VideoLlavaConfig(
        vision_config=vision, text_config=text, vision_feature_layer=-2,
        image_token_index=tok.convert_tokens_to_ids("<image>"), video_token_index=tok.convert_tokens_to_ids("<video>"),
    )  # fmt: skip
    VideoLlavaForConditionalGeneration(config).eval().save_pretrained(folder)
    sizes = dict(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    processor = VideoLlavaProcessor(
        image_processor=VideoLlavaImageProcessor(**sizes), video_processor=VideoLlavaVideoProcessor(**sizes),
        tokenizer=tok, patch_size=patch, vision_feature_select_strategy="default", num_additional_image_tokens=1,
    )  # fmt: skip
    processor.save_pretrained(folder)
