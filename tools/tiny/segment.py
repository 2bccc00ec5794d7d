"""Tiny random checkpoints for ``visagent.tools.segment`` (same architectures, random weights, fixed seed)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from visagent.tools.models import register_tiny
from visagent.tools.segment import ARCH_FILE, build_sam_from_arch

TINY_IMAGE_SIZE = 64
TINY_PATCH = 8


@register_tiny("sam")
def build_tiny_sam(folder: Path) -> None:
    """Tiny random ``SamModel`` (64 px input, 8x8 embedding) + ``SamProcessor`` resizing to 64 px."""
    import torch
    from transformers import SamConfig, SamImageProcessor, SamModel, SamProcessor

    torch.manual_seed(0)
    dim = 32
    emb = TINY_IMAGE_SIZE // TINY_PATCH
    config = SamConfig(
        vision_config={
            "hidden_size": dim,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "mlp_dim": 64,
            "image_size": TINY_IMAGE_SIZE,
            "patch_size": TINY_PATCH,
            "output_channels": dim,
            "window_size": 4,
            "global_attn_indexes": [1],
            "num_pos_feats": dim // 2,
        },
        prompt_encoder_config={
            "hidden_size": dim,
            "image_size": TINY_IMAGE_SIZE,
            "patch_size": TINY_PATCH,
            "image_embedding_size": emb,
            "mask_input_channels": 4,
        },
        mask_decoder_config={
            "hidden_size": dim,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "mlp_dim": 64,
            "iou_head_hidden_dim": dim,
        },
    )
    model = SamModel(config).eval()
    model.save_pretrained(folder)
    mask = 4 * emb
    image_processor = SamImageProcessor(
        size={"longest_edge": TINY_IMAGE_SIZE},
        pad_size={"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE},
        mask_size={"longest_edge": mask},
        mask_pad_size={"height": mask, "width": mask},
    )
    SamProcessor(image_processor).save_pretrained(folder)


def tiny_sam2_vision_config(size: int, dim: int) -> dict[str, object]:
    """The vision (Hiera backbone + FPN) part of a tiny SAM 2 config: ``size`` px square input,
    FPN width ``dim``; shared by the image and the video tiny checkpoints."""
    return {
        "backbone_config": {
            "model_type": "sam2_hiera_det_model",
            "hidden_size": 8,
            "num_attention_heads": 1,
            "image_size": [size, size],
            "blocks_per_stage": [1, 1, 2, 1],
            "embed_dim_per_stage": [8, 16, 32, 64],
            "num_attention_heads_per_stage": [1, 1, 1, 1],
            "window_size_per_stage": [4, 4, 4, 2],
            "global_attention_blocks": [3],  # not a stage's first (query-pooling) block
            "window_positional_embedding_background_size": [2, 2],
        },
        "backbone_channel_list": [64, 32, 16, 8],
        "backbone_feature_sizes": [[size // 4, size // 4], [size // 8, size // 8], [size // 16, size // 16]],
        "fpn_hidden_size": dim,
    }


@register_tiny("sam2")
def build_tiny_sam2(folder: Path) -> None:
    """Tiny random ``Sam2Model`` (Hiera backbone, 64 px square input) + ``Sam2Processor``."""
    import torch
    from transformers import Sam2Config, Sam2ImageProcessor, Sam2Model, Sam2Processor

    torch.manual_seed(0)
    size, dim = TINY_IMAGE_SIZE, 32
    config = Sam2Config(
        vision_config=tiny_sam2_vision_config(size, dim),
        prompt_encoder_config={"hidden_size": dim, "image_size": size, "patch_size": 16, "mask_input_channels": 4},
        mask_decoder_config={"hidden_size": dim, "mlp_dim": 64, "num_attention_heads": 2, "iou_head_hidden_dim": dim},
    )
    Sam2Model(config).eval().save_pretrained(folder)
    mask = size // 4
    image_processor = Sam2ImageProcessor(size={"height": size, "width": size}, mask_size={"height": mask, "width": mask})
    Sam2Processor(image_processor).save_pretrained(folder)


#: architecture of the tiny official checkpoint (same keys as ``build_sam_from_arch`` reads)
TINY_OFFICIAL_ARCH: dict[str, Any] = {
    "image_size": TINY_IMAGE_SIZE,
    "vit_patch_size": TINY_PATCH,
    "encoder_embed_dim": 32,
    "encoder_depth": 2,
    "encoder_num_heads": 2,
    "encoder_global_attn_indexes": [1],
    "window_size": 4,
    "mlp_ratio": 2,
    "prompt_embed_dim": 32,
    "mask_in_chans": 4,
    "decoder_depth": 2,
    "decoder_mlp_dim": 64,
    "decoder_num_heads": 2,
    "iou_head_hidden_dim": 32,
}


@register_tiny("sam", backend="official")
def build_tiny_sam_official(folder: Path) -> None:
    """Tiny random segment-anything ``Sam``: ``sam_tiny.pth`` (state dict) + ``sam_arch.json``."""
    import torch

    torch.manual_seed(0)
    sam = build_sam_from_arch(TINY_OFFICIAL_ARCH)
    torch.save(sam.state_dict(), folder / "sam_tiny.pth")
    (folder / ARCH_FILE).write_text(json.dumps(TINY_OFFICIAL_ARCH, indent=2) + "\n")
