"""Tiny random checkpoints for ``visagent.tools.search`` (same architectures, random weights, fixed seed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from visagent.tools.models import register_tiny
from visagent.tools.tiny.text import tiny_tokenizer

def _tiny_sizes() -> tuple[dict[str, Any], int]:
    return dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4), 32


@register_tiny("clip")
def build_tiny_clip(folder: Path) -> None:
    """Tiny random CLIP (32 px images, patch 8) + CLIPProcessor with a byte-level BPE tokenizer."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    torch.manual_seed(0)
    small, size = _tiny_sizes()
    tok = tiny_tokenizer("bpe", model_max_length=64)
    text = dict(small, vocab_size=len(tok), max_position_embeddings=64, bos_token_id=tok.bos_token_id,
                eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)  # fmt: skip
    config = CLIPConfig(text_config=text, vision_config=dict(small, image_size=size, patch_size=8), projection_dim=16)
    CLIPModel(config).eval().save_pretrained(folder)
    ip = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    CLIPProcessor(image_processor=ip, tokenizer=tok).save_pretrained(folder)


@register_tiny("siglip")
def build_tiny_siglip(folder: Path) -> None:
    """Tiny random SigLIP (32 px, patch 8, text length 16) + SiglipProcessor (byte-level BPE)."""
    import torch
    from transformers import (
        SiglipConfig,
        SiglipImageProcessor,
        SiglipModel,
        SiglipProcessor,
    )

    torch.manual_seed(0)
    small, size = _tiny_sizes()
    tok = tiny_tokenizer("bpe", model_max_length=16)
    text = dict(small, vocab_size=len(tok), max_position_embeddings=16, projection_size=32,
                bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)  # fmt: skip
    config = SiglipConfig(text_config=text, vision_config=dict(small, image_size=size, patch_size=8))
    SiglipModel(config).eval().save_pretrained(folder)
    ip = SiglipImageProcessor(size={"height": size, "width": size})
    SiglipProcessor(image_processor=ip, tokenizer=tok).save_pretrained(folder)


@register_tiny("flava")
def build_tiny_flava(folder: Path) -> None:
    """Tiny random FLAVA (32 px, patch 8) + FlavaProcessor with a small WordPiece vocabulary."""
    import torch
    from transformers import (
        BertTokenizer,
        FlavaConfig,
        FlavaImageProcessor,
        FlavaModel,
        FlavaProcessor,
    )

    torch.manual_seed(0)
    small, size = _tiny_sizes()
    words = "a an the of photo picture image cat dog person cup coffee rocket horse coins text page".split()
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"abcdefghijklmnopqrstuvwxyz0123456789.,?!'-", *words]
    tok = BertTokenizer(vocab={w: i for i, w in enumerate(vocab)}, model_max_length=64)
    config = FlavaConfig(
        image_config=dict(small, image_size=size, patch_size=8),
        text_config=dict(small, vocab_size=len(vocab), max_position_embeddings=64),
        multimodal_config=dict(small, num_hidden_layers=1),
        image_codebook_config=dict(hidden_size=16, num_groups=1, num_blocks_per_group=1, vocab_size=32),
        projection_dim=16, hidden_size=32,
    )  # fmt: skip
    FlavaModel(config).eval().save_pretrained(folder)
    ip = FlavaImageProcessor(size={"height": size, "width": size}, crop_size={"height": size, "width": size})
    FlavaProcessor(image_processor=ip, tokenizer=tok).save_pretrained(folder)
