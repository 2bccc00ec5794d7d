"""Tiny random checkpoint for ``visagent.tools.segment_video``: a SAM 2 video predictor
(``Sam2VideoModel`` + ``Sam2VideoProcessor``), same architecture as ``facebook/sam2.1-hiera-*``
with a small Hiera, 64 px input and narrow memory modules, random weights (fixed seed)."""

from __future__ import annotations

from pathlib import Path

from visagent.tools.models import register_tiny
from visagent.tools.tiny.segment import tiny_sam2_vision_config

TINY_IMAGE_SIZE = 64
#: hidden width of the FPN, mask decoder and memory attention. SAM 2 splits each object pointer
#: into hidden / mem_dim memory tokens and its memory attention reads 64-wide memories, so the
#: hidden width must be a multiple of 64 above it (the real checkpoints: 256 / 64)
TINY_HIDDEN = 128
#: an object-score bias: with random weights the "object present" logit sits near 0, and SAM 2
#: blanks the masks of absent objects; the bias keeps the tiny masks non-empty (structure tests)
TINY_OBJECT_SCORE_BIAS = 4.0


def tiny_sam2_video_config(size: int = TINY_IMAGE_SIZE, dim: int = TINY_HIDDEN) -> object:
    """A ``Sam2VideoConfig`` of the real architecture at a small size (``size`` px square input)."""
    from transformers import Sam2VideoConfig

    return Sam2VideoConfig(
        vision_config=tiny_sam2_vision_config(size, dim),
        prompt_encoder_config={"hidden_size": dim, "image_size": size, "patch_size": 16, "mask_input_channels": 4},
        mask_decoder_config={"hidden_size": dim, "mlp_dim": 64, "num_attention_heads": 2, "iou_head_hidden_dim": 32},
        image_size=size,
        memory_attention_hidden_size=dim,
        memory_attention_num_layers=1,
        memory_attention_feed_forward_hidden_size=64,
        memory_attention_rope_feat_sizes=[size // 16, size // 16],
        memory_encoder_hidden_size=dim,
        memory_encoder_output_channels=64,
        mask_downsampler_embed_dim=dim,
        memory_fuser_num_layers=1,
        memory_fuser_embed_dim=dim,
        memory_fuser_intermediate_dim=64,
    )


def save_sam2_video_processor(folder: Path, size: int) -> None:
    """``Sam2VideoProcessor`` (image + video processors) resizing to ``size`` px, saved to ``folder``."""
    from transformers import Sam2ImageProcessor, Sam2VideoProcessor
    from transformers.models.sam2_video.video_processing_sam2_video import Sam2VideoVideoProcessor

    mask = size // 4
    image_processor = Sam2ImageProcessor(size={"height": size, "width": size}, mask_size={"height": mask, "width": mask})
    video_processor = Sam2VideoVideoProcessor(size={"height": size, "width": size})
    Sam2VideoProcessor(image_processor, video_processor).save_pretrained(folder)


@register_tiny("sam2-video")
def build_tiny_sam2_video(folder: Path) -> None:
    """Tiny random ``Sam2VideoModel`` (64 px, ~1M parameters) + ``Sam2VideoProcessor``."""
    import torch
    from transformers import Sam2VideoModel

    torch.manual_seed(0)
    model = Sam2VideoModel(tiny_sam2_video_config()).eval()
    with torch.no_grad():
        model.mask_decoder.pred_obj_score_head.proj_out.bias.fill_(TINY_OBJECT_SCORE_BIAS)
    model.save_pretrained(folder)
    save_sam2_video_processor(folder, TINY_IMAGE_SIZE)
