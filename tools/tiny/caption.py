"""Tiny random checkpoints for ``visagent.tools.caption`` (same architectures, random weights, fixed seed)."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

from visagent.tools.models import register_tiny
from visagent.tools.tiny.text import SMALL, save, tiny_tokenizer

TINY_IMAGE = 32
_IMAGE = {"height": TINY_IMAGE, "width": TINY_IMAGE}
_VISION = dict(SMALL, image_size=TINY_IMAGE, patch_size=8)
_OPT_SPECIALS = {"bos_token": "</s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}
_NUM_QUERY = 4


def _build_tiny_blip(folder: Path, model_class: str) -> None:
    """Tiny random BLIP (``model_class``) + ``BlipProcessor`` (32 px)."""
    import torch
    import transformers
    from transformers import BlipConfig, BlipImageProcessor, BlipProcessor

    torch.manual_seed(0)
    tok = tiny_tokenizer("wordpiece", ("[DEC]",), bos_token="[DEC]")
    text = dict(
        SMALL, vocab_size=len(tok), max_position_embeddings=512, encoder_hidden_size=32, bos_token_id=tok.convert_tokens_to_ids("[DEC]"),
        pad_token_id=tok.pad_token_id, sep_token_id=tok.sep_token_id, eos_token_id=tok.sep_token_id,
    )  # fmt: skip
    model = getattr(transformers, model_class)(BlipConfig(text_config=text, vision_config=_VISION, projection_dim=32)).eval()
    save(folder, model, BlipProcessor(image_processor=BlipImageProcessor(size=_IMAGE), tokenizer=tok))


def _build_tiny_qformer_lm(folder: Path, arch: str) -> None:
    """Tiny ``<arch>ForConditionalGeneration`` (ViT + Q-Former + OPT) + ``<arch>Processor``;
    InstructBLIP's Q-Former reads the instruction with a BERT tokenizer of its own."""
    import torch
    import transformers
    from transformers import BlipImageProcessor

    torch.manual_seed(0)
    tok = tiny_tokenizer("word", _OPT_SPECIALS, ("<image>",))
    tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
    opt = dict(
        SMALL, ffn_dim=64, vocab_size=len(tok), max_position_embeddings=512, word_embed_proj_dim=32,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )  # fmt: skip
    qformer = dict(SMALL, encoder_hidden_size=32, max_position_embeddings=512)
    extra: dict[str, Any] = {}
    if arch == "InstructBlip":
        extra["qformer_tokenizer"] = qtok = tiny_tokenizer("wordpiece")
        qformer.update(vocab_size=len(qtok), pad_token_id=qtok.pad_token_id)
    config = getattr(transformers, f"{arch}Config")(
        vision_config=_VISION, qformer_config=qformer, text_config=opt, num_query_tokens=_NUM_QUERY,
        image_token_index=tok.convert_tokens_to_ids("<image>"),
    )  # fmt: skip
    model = getattr(transformers, f"{arch}ForConditionalGeneration")(config).eval()
    processor = getattr(transformers, f"{arch}Processor")(
        image_processor=BlipImageProcessor(size=_IMAGE), tokenizer=tok, num_query_tokens=_NUM_QUERY, **extra
    )
    save(folder, model, processor)


register_tiny("blip")(partial(_build_tiny_blip, model_class="BlipForConditionalGeneration"))
register_tiny("blip-vqa")(partial(_build_tiny_blip, model_class="BlipForQuestionAnswering"))
register_tiny("blip2")(partial(_build_tiny_qformer_lm, arch="Blip2"))  # OPT language model
register_tiny("instructblip")(partial(_build_tiny_qformer_lm, arch="InstructBlip"))  # OPT LM, BERT Q-Former tokenizer


@register_tiny("git")
def build_tiny_git(folder: Path) -> None:
    """Tiny random ``GitForCausalLM`` + ``GitProcessor`` (CLIP image processor, BERT tokenizer)."""
    import torch
    from transformers import CLIPImageProcessor, GitConfig, GitForCausalLM, GitProcessor

    torch.manual_seed(0)
    tok = tiny_tokenizer("wordpiece")
    config = GitConfig(
        vision_config=_VISION, vocab_size=len(tok), max_position_embeddings=512,
        bos_token_id=tok.cls_token_id, eos_token_id=tok.sep_token_id, pad_token_id=tok.pad_token_id, **SMALL,
    )  # fmt: skip
    image_processor = CLIPImageProcessor(size={"shortest_edge": TINY_IMAGE}, crop_size=_IMAGE)
    save(folder, GitForCausalLM(config).eval(), GitProcessor(image_processor=image_processor, tokenizer=tok))
