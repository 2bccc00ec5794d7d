"""Tiny random checkpoints for ``visagent.tools.detect`` (same architectures, random weights, fixed seed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from visagent.tools.detect import _quiet
from visagent.tools.models import register_tiny
from visagent.tools.tiny.text import SMALL, save, tiny_tokenizer

TINY_QUERIES = 20
TINY_OFFICIAL_SIZE = 160
TINY_OFFICIAL_MAX_SIZE = 320
#: official tiny architecture: groundingdino's SwinT OGC config with a small transformer
#: (groundingdino hardcodes a 256-wide text position embedding, so hidden_dim stays 256)
TINY_OFFICIAL_OVERRIDES: dict[str, Any] = {
    "enc_layers": 1,
    "dec_layers": 2,
    "dim_feedforward": 64,
    "nheads": 2,
    "num_queries": TINY_QUERIES,
    "enc_n_points": 2,
    "dec_n_points": 2,
    "use_checkpoint": False,
    "use_transformer_ckpt": False,
    "text_encoder_type": "text_encoder",
}


#: the BERT text encoder of both tiny Grounding DINOs (1 layer; 256 text positions + specials)
_BERT = dict(SMALL, num_hidden_layers=1, max_position_embeddings=260)


def _tiny_bert(folder: Path) -> Any:
    """A tiny random ``BertModel`` + ``BertTokenizer`` saved in ``folder``; returns the tokenizer."""
    from transformers import BertConfig, BertModel

    tok = tiny_tokenizer("wordpiece")
    save(folder, BertModel(BertConfig(vocab_size=len(tok), **_BERT)).eval(), tok)
    return tok


@register_tiny("grounding-dino")
def build_tiny_grounding_dino(folder: Path) -> None:
    """Tiny random ``GroundingDinoForObjectDetection`` (Swin backbone, BERT text encoder) +
    ``GroundingDinoProcessor`` (160-320 px)."""
    import torch
    from transformers import (
        BertConfig,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoImageProcessor,
        GroundingDinoProcessor,
        SwinConfig,
    )

    torch.manual_seed(0)
    tok = tiny_tokenizer("wordpiece")
    config = GroundingDinoConfig(
        backbone_config=SwinConfig(
            image_size=64, embed_dim=16, depths=[1] * 4, num_heads=[1] * 4, window_size=4, out_features=["stage2", "stage3", "stage4"]
        ),
        text_config=BertConfig(vocab_size=len(tok), **_BERT),
        d_model=32, encoder_layers=1, decoder_layers=2,  # >= 2: one layer with a shared bbox embed fails on tie_weights
        encoder_ffn_dim=64, decoder_ffn_dim=64, encoder_attention_heads=2, decoder_attention_heads=2,
        encoder_n_points=2, decoder_n_points=2, num_queries=TINY_QUERIES,
    )  # fmt: skip
    model = GroundingDinoForObjectDetection(config).eval()
    processor = GroundingDinoProcessor(
        image_processor=GroundingDinoImageProcessor(
            size={"shortest_edge": TINY_OFFICIAL_SIZE, "longest_edge": TINY_OFFICIAL_MAX_SIZE}
        ),
        tokenizer=tok,
    )
    save(folder, model, processor)


@register_tiny("grounding-dino", backend="official")
def build_tiny_grounding_dino_official(folder: Path) -> None:
    """Tiny random official Grounding DINO, built with groundingdino's ``build_model`` from a
    config derived from its ``GroundingDINO_SwinT_OGC.py``; writes ``groundingdino_tiny.pth``
    (``{"model": state_dict}``, the official format), ``GroundingDINO_tiny.py`` and a tiny BERT in
    ``text_encoder/``."""
    import groundingdino
    import torch
    from groundingdino.models import build_model
    from groundingdino.util.slconfig import SLConfig

    from visagent.tools._gdino_compat import install

    install()
    torch.manual_seed(0)
    _tiny_bert(folder / "text_encoder")
    source = Path(groundingdino.__file__).parent / "config" / "GroundingDINO_SwinT_OGC.py"
    overrides = dict(TINY_OFFICIAL_OVERRIDES, image_size=TINY_OFFICIAL_SIZE, max_size=TINY_OFFICIAL_MAX_SIZE)
    lines = []
    for line in source.read_text().splitlines():
        key = line.split("=", 1)[0].strip()
        if "=" in line and key in overrides:
            line = f"{key} = {overrides.pop(key)!r}"
        lines.append(line)
    lines += [f"{key} = {value!r}" for key, value in overrides.items()]
    config_file = folder / "GroundingDINO_tiny.py"
    config_file.write_text("\n".join(lines) + "\n")
    args = SLConfig.fromfile(str(config_file))
    args.device = "cpu"
    args.text_encoder_type = str(folder / "text_encoder")
    with _quiet():
        model = build_model(args).eval()
    torch.save({"model": model.state_dict()}, folder / "groundingdino_tiny.pth")


@register_tiny("owlv2")
def build_tiny_owlv2(folder: Path) -> None:
    """Tiny random ``Owlv2ForObjectDetection`` + ``Owlv2Processor`` (64 px, character-level CLIP
    tokenizer)."""
    import torch
    from transformers import Owlv2Config, Owlv2ForObjectDetection, Owlv2ImageProcessor, Owlv2Processor

    torch.manual_seed(0)
    tok = tiny_tokenizer("clip")
    processor = Owlv2Processor(image_processor=Owlv2ImageProcessor(size={"height": 64, "width": 64}), tokenizer=tok)
    config = Owlv2Config(
        text_config=dict(
            SMALL, num_hidden_layers=1, vocab_size=len(tok), max_position_embeddings=16,
            bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        ),
        vision_config=dict(SMALL, num_hidden_layers=1, image_size=64, patch_size=16),
        projection_dim=32,
    )  # fmt: skip
    save(folder, Owlv2ForObjectDetection(config).eval(), processor)
