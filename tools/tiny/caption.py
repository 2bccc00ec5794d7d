"""Tiny random checkpoints for ``visagent.tools.caption`` (same architectures, random weights, fixed seed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from visagent.tools.models import register_tiny
from visagent.tools.tiny.text import tiny_tokenizer

TINY_IMAGE = 32


def _tiny_vision(**extra: Any) -> dict[str, Any]:
    cfg = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=TINY_IMAGE,
        patch_size=8,
    )
    cfg.update(extra)
    return cfg


def _blip_processor() -> Any:
    from transformers import BlipImageProcessor, BlipProcessor

    tok = tiny_tokenizer("wordpiece", ("[DEC]",), bos_token="[DEC]")
    return BlipProcessor(
        image_processor=BlipImageProcessor(size={"height": TINY_IMAGE, "width": TINY_IMAGE}), tokenizer=tok
    )


def _blip_config(processor: Any) -> Any:
    from transformers import BlipConfig

    tok = processor.tokenizer
    text = dict(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=512,
        bos_token_id=tok.convert_tokens_to_ids("[DEC]"),
        pad_token_id=tok.pad_token_id,
        sep_token_id=tok.sep_token_id,
        eos_token_id=tok.sep_token_id,
        encoder_hidden_size=32,
    )
    return BlipConfig(text_config=text, vision_config=_tiny_vision(), projection_dim=32)


def _save(model: Any, processor: Any, folder: Path) -> None:
    model.save_pretrained(folder)
    processor.save_pretrained(folder)


def _build_tiny_blip(folder: Path, model_class: str) -> None:
    import torch
    import transformers

    torch.manual_seed(0)
    processor = _blip_processor()
    model = getattr(transformers, model_class)(_blip_config(processor)).eval()
    _save(model, processor, folder)


@register_tiny("blip")
def build_tiny_blip(folder: Path) -> None:
    """Tiny random ``BlipForConditionalGeneration`` + ``BlipProcessor`` (32 px)."""
    _build_tiny_blip(folder, "BlipForConditionalGeneration")


@register_tiny("blip-vqa")
def build_tiny_blip_vqa(folder: Path) -> None:
    """Tiny random ``BlipForQuestionAnswering`` + ``BlipProcessor`` (32 px)."""
    _build_tiny_blip(folder, "BlipForQuestionAnswering")


_OPT_SPECIALS = {"bos_token": "</s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}
_NUM_QUERY = 4


def _tiny_opt(tok: Any) -> dict[str, Any]:
    return dict(
        vocab_size=len(tok),
        hidden_size=32,
        ffn_dim=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=512,
        word_embed_proj_dim=32,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )


def _tiny_qformer(**extra: Any) -> dict[str, Any]:
    cfg = dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        encoder_hidden_size=32,
        max_position_embeddings=512,
    )
    cfg.update(extra)
    return cfg


@register_tiny("blip2")
def build_tiny_blip2(folder: Path) -> None:
    """Tiny random ``Blip2ForConditionalGeneration`` (OPT language model) + ``Blip2Processor``."""
    import torch
    from transformers import (
        Blip2Config,
        Blip2ForConditionalGeneration,
        Blip2Processor,
        BlipImageProcessor,
    )

    torch.manual_seed(0)
    tok = tiny_tokenizer("word", _OPT_SPECIALS, ("<image>",))
    tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
    processor = Blip2Processor(
        image_processor=BlipImageProcessor(size={"height": TINY_IMAGE, "width": TINY_IMAGE}),
        tokenizer=tok,
        num_query_tokens=_NUM_QUERY,
    )
    config = Blip2Config(
        vision_config=_tiny_vision(),
        qformer_config=_tiny_qformer(),
        text_config=_tiny_opt(tok),
        num_query_tokens=_NUM_QUERY,
        image_token_index=tok.convert_tokens_to_ids("<image>"),
    )
    model = Blip2ForConditionalGeneration(config).eval()
    _save(model, processor, folder)


@register_tiny("instructblip")
def build_tiny_instructblip(folder: Path) -> None:
    """Tiny random ``InstructBlipForConditionalGeneration`` (OPT LM, BERT Q-Former tokenizer)."""
    import torch
    from transformers import (
        BlipImageProcessor,
        InstructBlipConfig,
        InstructBlipForConditionalGeneration,
        InstructBlipProcessor,
    )

    torch.manual_seed(0)
    tok = tiny_tokenizer("word", _OPT_SPECIALS, ("<image>",))
    tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
    qtok = tiny_tokenizer("wordpiece")
    processor = InstructBlipProcessor(
        image_processor=BlipImageProcessor(size={"height": TINY_IMAGE, "width": TINY_IMAGE}),
        tokenizer=tok,
        qformer_tokenizer=qtok,
        num_query_tokens=_NUM_QUERY,
    )
    config = InstructBlipConfig(
        vision_config=_tiny_vision(),
        qformer_config=_tiny_qformer(vocab_size=len(qtok), pad_token_id=qtok.pad_token_id),
        text_config=_tiny_opt(tok),
        num_query_tokens=_NUM_QUERY,
        image_token_index=tok.convert_tokens_to_ids("<image>"),
    )
    model = InstructBlipForConditionalGeneration(config).eval()
    _save(model, processor, folder)


@register_tiny("git")
def build_tiny_git(folder: Path) -> None:
    """Tiny random ``GitForCausalLM`` + ``GitProcessor`` (CLIP image processor, BERT tokenizer)."""
    import torch
    from transformers import CLIPImageProcessor, GitConfig, GitForCausalLM, GitProcessor

    torch.manual_seed(0)
    tok = tiny_tokenizer("wordpiece")
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": TINY_IMAGE}, crop_size={"height": TINY_IMAGE, "width": TINY_IMAGE}
    )
    processor = GitProcessor(image_processor=image_processor, tokenizer=tok)
    config = GitConfig(
        vision_config=_tiny_vision(),
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=512,
        bos_token_id=tok.cls_token_id,
        eos_token_id=tok.sep_token_id,
        pad_token_id=tok.pad_token_id,
    )
    model = GitForCausalLM(config).eval()
    _save(model, processor, folder)
