"""Tiny random checkpoints for ``visagent.tools.search`` (same architectures, random weights, fixed seed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from visagent.tools.models import register_tiny
from visagent.tools.tiny.text import save, tiny_tokenizer

_SMALL = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4)
_SIZE = 32


def _build_dual(folder: Path, arch: str, max_len: int, image_processor: Any, **config: Any) -> None:
    """Tiny ``<arch>Model`` (32 px images, patch 8) + ``<arch>Processor`` with a byte-level BPE
    tokenizer of ``max_len`` tokens; ``config`` adds to the top-level config."""
    import torch
    import transformers

    torch.manual_seed(0)
    tok = tiny_tokenizer("bpe", model_max_length=max_len)
    text = dict(
        _SMALL, vocab_size=len(tok), max_position_embeddings=max_len,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        **config.pop("text", {}),
    )  # fmt: skip
    cfg = getattr(transformers, f"{arch}Config")(text_config=text, vision_config=dict(_SMALL, image_size=_SIZE, patch_size=8), **config)
    model = getattr(transformers, f"{arch}Model")(cfg).eval()
    save(folder, model, getattr(transformers, f"{arch}Processor")(image_processor=image_processor, tokenizer=tok))


@register_tiny("clip")
def build_tiny_clip(folder: Path) -> None:
    """Tiny random CLIP (32 px images, patch 8) + CLIPProcessor with a byte-level BPE tokenizer."""
    from transformers import CLIPImageProcessor

    ip = CLIPImageProcessor(size={"shortest_edge": _SIZE}, crop_size={"height": _SIZE, "width": _SIZE})
    _build_dual(folder, "CLIP", 64, ip, projection_dim=16)


@register_tiny("siglip")
def build_tiny_siglip(folder: Path) -> None:
    """Tiny random SigLIP (32 px, patch 8, text length 16) + SiglipProcessor (byte-level BPE)."""
    from transformers import SiglipImageProcessor

    _build_dual(folder, "Siglip", 16, SiglipImageProcessor(size={"height": _SIZE, "width": _SIZE}), text={"projection_size": 32})


@register_tiny("flava")
def build_tiny_flava(folder: Path) -> None:
    """Tiny random FLAVA (32 px, patch 8) + FlavaProcessor with a small WordPiece vocabulary."""
    import torch
    from transformers import FlavaConfig, FlavaImageProcessor, FlavaModel, FlavaProcessor

    torch.manual_seed(0)
    tok = tiny_tokenizer("wordpiece", tuple("abcdefghijklmnopqrstuvwxyz0123456789-"), model_max_length=64)
    config = FlavaConfig(
        image_config=dict(_SMALL, image_size=_SIZE, patch_size=8),
        text_config=dict(_SMALL, vocab_size=len(tok), max_position_embeddings=64),
        multimodal_config=dict(_SMALL, num_hidden_layers=1),
        image_codebook_config=dict(hidden_size=16, num_groups=1, num_blocks_per_group=1, vocab_size=32),
        projection_dim=16, hidden_size=32,
    )  # fmt: skip
    ip = FlavaImageProcessor(size={"height": _SIZE, "width": _SIZE}, crop_size={"height": _SIZE, "width": _SIZE})
    save(folder, FlavaModel(config).eval(), FlavaProcessor(image_processor=ip, tokenizer=tok))
