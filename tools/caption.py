"""``caption`` and ``vqa``: image captioning and visual question answering.

One bundle interface (``CaptionBundle``) over four transformers architectures, picked from the
checkpoint's ``config.json`` ``model_type`` (never from its name):

- ``blip``: ``BlipForConditionalGeneration`` (caption; an optional text prefix such as "a photography
  of" conditions the caption) or ``BlipForQuestionAnswering`` (vqa; chosen for the ``vqa`` family).
- ``blip-2``: ``Blip2ForConditionalGeneration``; ``instructblip``: ``InstructBlipForConditionalGeneration``
  (the prompt is the instruction); ``git``: ``GitForCausalLM`` (the prompt is a text prefix).
  For vqa these get the prompt ``"Question: {question} Answer:"``.

Options (``models.caption.options`` / ``models.vqa.options``): ``max_new_tokens`` (caption 30,
vqa 10), ``num_beams`` (1), ``instruction`` (InstructBLIP's caption instruction when no prompt is
given; default "A short image description:").

Tiny random checkpoints of every architecture are registered here: ``tiny:blip``,
``tiny:blip-vqa``, ``tiny:blip2``, ``tiny:instructblip``, ``tiny:git``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field, field_validator
from visagent.errors import ToolError
from visagent.tools.base import Tool, ToolInput, ToolOutput, clip_text
from visagent.tools.models import checked_config, register_loader, register_tiny

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

log = logging.getLogger(__name__)

SUPPORTED = ("blip", "blip-2", "instructblip", "git")
VQA_PROMPT = "Question: {question} Answer:"
#: InstructBLIP always needs an instruction; used when a caption call gives no prompt
DEFAULT_INSTRUCTION = "A short image description:"


# -- input / output -------------------------------------------------------------------------
class CaptionInput(ToolInput):
    """``image``: image id. ``prompt``: optional text the caption continues (BLIP, GIT) or the
    instruction (InstructBLIP, BLIP-2)."""

    image: str = Field(description="image id, e.g. img_0")
    prompt: str | None = Field(default=None, description="optional text prefix / instruction")


class CaptionOutput(ToolOutput):
    image: str
    caption: str
    prompt: str | None = None

    def observation(self) -> str:
        return clip_text(f"caption of {self.image}: {self.caption!r}")


class VqaInput(ToolInput):
    """``image``: image id. ``question``: a question about the image, answered briefly."""

    image: str = Field(description="image id, e.g. img_0")
    question: str = Field(description="question about the image")

    @field_validator("question")
    @classmethod
    def _not_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("question must not be empty")
        return value.strip()


class VqaOutput(ToolOutput):
    image: str
    question: str
    answer: str

    def observation(self) -> str:
        return clip_text(f"{self.image}: Q: {clip_text(self.question, 200)} A: {self.answer!r}")


# -- bundle ----------------------------------------------------------------------------------
@dataclass
class CaptionBundle:
    """A loaded captioning / VQA model. ``kind``: the config's ``model_type``; ``task``:
    ``caption`` or ``vqa``. ``generate(image, prompt)`` -> decoded text (prompt removed)."""

    kind: str
    task: str
    model: Any
    processor: Any
    device: str = "cpu"
    dtype: Any = None
    checkpoint: str = ""
    options: dict[str, Any] = field(default_factory=dict)

    def generate(self, image: "Image.Image", prompt: str | None = None) -> str:
        import torch

        max_new = int(self.options.get("max_new_tokens", 10 if self.task == "vqa" else 30))
        gen: dict[str, Any] = {"max_new_tokens": max_new, "num_beams": int(self.options.get("num_beams", 1))}
        image = image.convert("RGB")
        tok = self.processor.tokenizer
        if self.kind == "instructblip" and not prompt:
            prompt = str(self.options.get("instruction", DEFAULT_INSTRUCTION))
        with torch.inference_mode():
            if self.kind == "git":
                inputs = self.processor(images=image, return_tensors="pt")
                ids = [tok.cls_token_id]
                if prompt:
                    ids += tok(prompt, add_special_tokens=False).input_ids
                inputs["input_ids"] = torch.tensor([ids])
            elif prompt:
                inputs = self.processor(images=image, text=prompt, return_tensors="pt")
            else:
                inputs = self.processor(images=image, return_tensors="pt")
            inputs = {
                k: (v.to(self.device, self.dtype) if v.is_floating_point() else v.to(self.device))
                for k, v in inputs.items()
                if hasattr(v, "to")
            }
            out = self.model.generate(**inputs, **gen)
        seq = out[0]
        if self.kind in ("blip-2", "instructblip", "git") and "input_ids" in inputs:
            n = inputs["input_ids"].shape[1]
            if seq.shape[0] >= n and torch.equal(seq[:n].cpu(), inputs["input_ids"][0].cpu()):
                seq = seq[n:]  # decoder-only models return the prompt first
        return tok.decode(seq, skip_special_tokens=True).strip()


def _model_class(kind: str, task: str, config: Any, checkpoint: str) -> Any:
    import transformers

    if kind == "blip":
        archs = list(getattr(config, "architectures", None) or [])
        if task == "vqa":
            if archs and "BlipForQuestionAnswering" not in archs:
                raise ToolError(
                    f"vqa checkpoint {checkpoint} is a {archs[0]} checkpoint; BLIP VQA needs a "
                    "BlipForQuestionAnswering checkpoint (e.g. Salesforce/blip-vqa-base)"
                )
            return transformers.BlipForQuestionAnswering
        if archs and "BlipForConditionalGeneration" not in archs:
            raise ToolError(
                f"caption checkpoint {checkpoint} is a {archs[0]} checkpoint; BLIP captioning needs a "
                "BlipForConditionalGeneration checkpoint (e.g. Salesforce/blip-image-captioning-large)"
            )
        return transformers.BlipForConditionalGeneration
    return {
        "blip-2": transformers.Blip2ForConditionalGeneration,
        "instructblip": transformers.InstructBlipForConditionalGeneration,
        "git": transformers.GitForCausalLM,
    }[kind]


def load_captioner(checkpoint: str, device: str, dtype: Any, options: dict[str, Any], task: str) -> CaptionBundle:
    """Load a caption / VQA checkpoint (Hub id or folder) with ``from_pretrained``; the
    architecture comes from the checkpoint's ``config.json`` ``model_type``."""
    from transformers import AutoProcessor

    config = checked_config(checkpoint, task, SUPPORTED)
    kind = config.model_type
    model_cls = _model_class(kind, task, config, checkpoint)
    model = model_cls.from_pretrained(checkpoint, dtype=dtype).to(device).eval()
    processor = AutoProcessor.from_pretrained(checkpoint)
    return CaptionBundle(kind, task, model, processor, device, dtype, checkpoint, dict(options))


@register_loader("caption", "transformers")
def load_caption(checkpoint: str, device: str, dtype: Any, options: dict[str, Any]) -> CaptionBundle:
    return load_captioner(checkpoint, device, dtype, options, "caption")


@register_loader("vqa", "transformers")
def load_vqa(checkpoint: str, device: str, dtype: Any, options: dict[str, Any]) -> CaptionBundle:
    return load_captioner(checkpoint, device, dtype, options, "vqa")


# -- tools -----------------------------------------------------------------------------------
class Caption(Tool):
    name = "caption"
    description = (
        "Describe an image in one sentence. Optional prompt: a text prefix the caption continues "
        "(e.g. 'a photography of')."
    )
    Input = CaptionInput
    Output = CaptionOutput
    families = ("caption",)

    def run(self, inp: CaptionInput, ctx: Any) -> CaptionOutput:  # noqa: D102
        image = ctx.image(inp.image)
        with ctx.model("caption") as bundle:
            text = bundle.generate(image, inp.prompt)
        return CaptionOutput(image=inp.image, caption=text, prompt=inp.prompt)


class Vqa(Tool):
    name = "vqa"
    description = "Answer a short question about an image (a word or a few words, e.g. a colour or yes/no)."
    Input = VqaInput
    Output = VqaOutput
    families = ("vqa",)

    def run(self, inp: VqaInput, ctx: Any) -> VqaOutput:  # noqa: D102
        image = ctx.image(inp.image)
        with ctx.model("vqa") as bundle:
            prompt = inp.question if bundle.kind == "blip" else VQA_PROMPT.format(question=inp.question)
            answer = bundle.generate(image, prompt)
        return VqaOutput(image=inp.image, question=inp.question, answer=answer)


# -- tiny random checkpoints -----------------------------------------------------------------
TINY_WORDS = (
    "a an the of in on with and is are what how many which color photo photography picture image "
    "question answer cat dog cup coffee mug table person man woman rocket coin coins page text "
    "sitting red blue green white black yes no one two three four"
).split()
TINY_IMAGE = 32


def tiny_bert_vocab(extra: tuple[str, ...] = ()) -> dict[str, int]:
    """A small WordPiece vocabulary (BERT special tokens, punctuation, common words)."""
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *extra, ".", ",", "?", "!", "'", *TINY_WORDS]
    return {t: i for i, t in enumerate(dict.fromkeys(tokens))}


def tiny_bert_tokenizer(extra: tuple[str, ...] = (), **kwargs: Any) -> Any:
    from transformers import BertTokenizer

    return BertTokenizer(vocab=tiny_bert_vocab(extra), **kwargs)


def tiny_word_tokenizer(specials: dict[str, str], extra: tuple[str, ...] = ()) -> Any:
    """A word-level fast tokenizer (decoder LMs such as OPT); ``specials``: role -> token."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tokens = list(dict.fromkeys([*specials.values(), *extra, ".", ",", "?", ":", *TINY_WORDS]))
    vocab = {t: i for i, t in enumerate(tokens)}
    raw = Tokenizer(models.WordLevel(vocab=vocab, unk_token=specials["unk_token"]))
    raw.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace()])
    fast = PreTrainedTokenizerFast(tokenizer_object=raw, **specials)
    return fast


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

    tok = tiny_bert_tokenizer(("[DEC]",), bos_token="[DEC]")
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
    tok = tiny_word_tokenizer(_OPT_SPECIALS, ("<image>",))
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
    tok = tiny_word_tokenizer(_OPT_SPECIALS, ("<image>",))
    tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
    qtok = tiny_bert_tokenizer()
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
    tok = tiny_bert_tokenizer()
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
