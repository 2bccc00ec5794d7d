"""``caption`` and ``vqa``: image captioning and visual question answering.

One class per architecture behind the ``Captioner`` protocol (four transformers architectures), picked from the
checkpoint's ``config.json`` ``model_type`` (never from its name):

- ``blip``: ``BlipForConditionalGeneration`` (caption; an optional text prefix such as "a photography
  of" conditions the caption) or ``BlipForQuestionAnswering`` (vqa; chosen for the ``vqa`` family).
- ``blip-2``: ``Blip2ForConditionalGeneration``; ``instructblip``: ``InstructBlipForConditionalGeneration``
  (the prompt is the instruction); ``git``: ``GitForCausalLM`` (the prompt is a text prefix).
  For vqa these get the prompt ``"Question: {question} Answer:"``.

Options (``models.caption.options`` / ``models.vqa.options``): ``max_new_tokens`` (caption 30,
vqa 10), ``num_beams`` (1), ``instruction`` (InstructBLIP's caption instruction when no prompt is
given; default "A short image description:").

Batching: ``generate_many(requests)`` generates for many ``GenerateRequest`` s (image + prompt) of
concurrent calls; ``generate`` is its batch of one. Requests whose model inputs have the same shapes
(images are resized to the processor's fixed size; prompts of the same token length) share one
``generate`` call. Prompts are never padded: BLIP's VQA decoder attends to every question token and
decoder-only models continue right after the prompt, so padding would change the answers; grouping
keeps batched answers equal to unbatched ones.

Tiny random checkpoints of every architecture (``tiny:blip``, ``tiny:blip-vqa``, ``tiny:blip2``,
``tiny:instructblip``, ``tiny:git``) are built by ``visagent.tools.tiny.caption``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from pydantic import Field

from visagent.errors import ToolError
from visagent.tools.base import NonEmptyStr, Tool, ToolInput, ToolOutput, clip_text
from visagent.tools.models import batched, checked_config, register_loader, to_device

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
    question: NonEmptyStr = Field(description="question about the image")


class VqaOutput(ToolOutput):
    image: str
    question: str
    answer: str

    def observation(self) -> str:
        return clip_text(f"{self.image}: Q: {clip_text(self.question, 200)} A: {self.answer!r}")


# -- bundle ----------------------------------------------------------------------------------
class Captioner(Protocol):
    """What caption / vqa need of a loaded model (one class per architecture): ``generate(image,
    prompt)`` -> decoded text (prompt removed). ``kind``: the config's ``model_type``; ``task``:
    ``caption`` or ``vqa``."""

    kind: str
    task: str
    checkpoint: str

    def generate(self, image: "Image.Image", prompt: str | None = None) -> str: ...

    def generate_many(self, requests: list["GenerateRequest"]) -> list[str]: ...


@dataclass
class GenerateRequest:
    """One generation: ``image`` (PIL, any mode) and an optional ``prompt`` (for vqa:
    ``vqa_prompt(kind, question)``)."""

    image: "Image.Image"
    prompt: str | None = None


def vqa_prompt(kind: str, question: str) -> str:
    """The prompt a vqa question becomes: the question itself for BLIP, else ``VQA_PROMPT``."""
    return question if kind == "blip" else VQA_PROMPT.format(question=question)


@dataclass
class BlipCaptioner:
    """BLIP (``BlipForConditionalGeneration`` / ``BlipForQuestionAnswering``): the encoder-decoder
    returns only the generated text."""

    task: str
    model: Any
    processor: Any
    device: str = "cpu"
    dtype: Any = None
    checkpoint: str = ""
    options: dict[str, Any] = field(default_factory=dict)
    kind: ClassVar[str] = "blip"
    #: decoder-only models return the prompt before the generated text
    echoes_prompt: ClassVar[bool] = False

    def _inputs(self, image: "Image.Image", prompt: str | None) -> dict[str, Any]:
        if prompt:
            return self.processor(images=image, text=prompt, return_tensors="pt")
        return self.processor(images=image, return_tensors="pt")

    def generate(self, image: "Image.Image", prompt: str | None = None) -> str:
        return self.generate_many([GenerateRequest(image, prompt)])[0]

    def generate_many(self, requests: list[GenerateRequest]) -> list[str]:
        """Decoded text per request (prompt removed), same order; one ``generate`` per group of
        requests whose inputs have the same shapes."""
        import torch

        max_new = int(self.options.get("max_new_tokens", 10 if self.task == "vqa" else 30))
        gen: dict[str, Any] = {"max_new_tokens": max_new, "num_beams": int(self.options.get("num_beams", 1))}
        prepared = []
        for r in requests:
            raw = self._inputs(r.image.convert("RGB"), r.prompt)
            prepared.append({k: v for k, v in raw.items() if hasattr(v, "to")})
        groups: dict[tuple[Any, ...], list[int]] = {}
        for i, inp in enumerate(prepared):
            groups.setdefault(tuple((k, tuple(v.shape)) for k, v in sorted(inp.items())), []).append(i)
        texts: list[str] = [""] * len(requests)
        for members in groups.values():
            batch = {k: torch.cat([prepared[i][k] for i in members]) for k in prepared[members[0]]}
            with torch.inference_mode():
                inputs = to_device(batch, self.device, self.dtype)
                seqs = self.model.generate(**inputs, **gen)
            for row, i in enumerate(members):
                seq = seqs[row]
                if self.echoes_prompt and "input_ids" in inputs:
                    n = inputs["input_ids"].shape[1]
                    if seq.shape[0] >= n and torch.equal(seq[:n].cpu(), inputs["input_ids"][row].cpu()):
                        seq = seq[n:]
                texts[i] = self.processor.tokenizer.decode(seq, skip_special_tokens=True).strip()
        return texts


@dataclass
class Blip2Captioner(BlipCaptioner):
    """BLIP-2 (``Blip2ForConditionalGeneration``: Q-Former + a decoder-only LM)."""

    kind: ClassVar[str] = "blip-2"
    echoes_prompt: ClassVar[bool] = True


@dataclass
class InstructBlipCaptioner(Blip2Captioner):
    """InstructBLIP: always prompted; captions use ``options.instruction``."""

    kind: ClassVar[str] = "instructblip"

    def _inputs(self, image: "Image.Image", prompt: str | None) -> dict[str, Any]:
        return super()._inputs(image, prompt or str(self.options.get("instruction", DEFAULT_INSTRUCTION)))


@dataclass
class GitCaptioner(BlipCaptioner):
    """GIT (``GitForCausalLM``): the prompt follows [CLS] as plain input ids."""

    kind: ClassVar[str] = "git"
    echoes_prompt: ClassVar[bool] = True

    def _inputs(self, image: "Image.Image", prompt: str | None) -> dict[str, Any]:
        import torch

        tok = self.processor.tokenizer
        inputs = self.processor(images=image, return_tensors="pt")
        ids = [tok.cls_token_id] + (tok(prompt, add_special_tokens=False).input_ids if prompt else [])
        inputs["input_ids"] = torch.tensor([ids])
        return inputs


_CAPTIONERS: dict[str, type[BlipCaptioner]] = {
    c.kind: c for c in (BlipCaptioner, Blip2Captioner, InstructBlipCaptioner, GitCaptioner)
}


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


def load_captioner(checkpoint: str, device: str, dtype: Any, options: dict[str, Any], task: str) -> Captioner:
    """Load a caption / VQA checkpoint (Hub id or folder) with ``from_pretrained``; the
    architecture comes from the checkpoint's ``config.json`` ``model_type``."""
    from transformers import AutoProcessor

    config = checked_config(checkpoint, task, SUPPORTED)
    kind = config.model_type
    model_cls = _model_class(kind, task, config, checkpoint)
    model = model_cls.from_pretrained(checkpoint, dtype=dtype).to(device).eval()
    processor = AutoProcessor.from_pretrained(checkpoint)
    return _CAPTIONERS[kind](task, model, processor, device, dtype, checkpoint, dict(options))


@register_loader("caption", "transformers")
def load_caption(checkpoint: str, device: str, dtype: Any, options: dict[str, Any]) -> Captioner:
    return load_captioner(checkpoint, device, dtype, options, "caption")


@register_loader("vqa", "transformers")
def load_vqa(checkpoint: str, device: str, dtype: Any, options: dict[str, Any]) -> Captioner:
    return load_captioner(checkpoint, device, dtype, options, "vqa")


# -- tools -----------------------------------------------------------------------------------
class Caption(Tool):
    name = "caption"
    description = (
        "Describe an image in one sentence. Optional prompt: a text prefix the caption continues "
        "(e.g. 'a photography of')."
    )
    families = ("caption",)

    def run(self, inp: CaptionInput, ctx: Any) -> CaptionOutput:  # noqa: D102
        image = ctx.image(inp.image)
        with batched(ctx, "caption") as m:
            text = m.submit("generate_many", GenerateRequest(image, inp.prompt))
        return CaptionOutput(image=inp.image, caption=text, prompt=inp.prompt)


class Vqa(Tool):
    name = "vqa"
    description = "Answer a short question about an image (a word or a few words, e.g. a colour or yes/no)."
    families = ("vqa",)

    def run(self, inp: VqaInput, ctx: Any) -> VqaOutput:  # noqa: D102
        image = ctx.image(inp.image)
        with batched(ctx, "vqa") as m:
            answer = m.submit("generate_many", GenerateRequest(image, vqa_prompt(m.model.kind, inp.question)))
        return VqaOutput(image=inp.image, question=inp.question, answer=answer)
