"""Planner models: the ``planner`` family's loader.

- Loader ``("planner", "transformers")``: ``AutoProcessor`` + ``AutoModelForImageTextToText`` from
  the checkpoint, exactly as for ``llava-hf/llava-1.5-7b-hf``, ``llava-hf/llava-v1.6-mistral-7b-hf``
  (LLaVA-NeXT) or ``llava-hf/llava-onevision-qwen2-7b-ov-hf``. The architecture comes from the
  checkpoint's ``config.json`` (``model_type``); the bundle is a ``PlannerBundle``.
- Tiny checkpoints (``visagent.tools.tiny.planner``; random weights, fixed seed, same architectures): ``tiny:llava``
  (LlavaForConditionalGeneration: CLIP vision tower + Llama text model), ``tiny:llava-next``
  (LlavaNextForConditionalGeneration, any-resolution tiles) and ``tiny:llava-onevision``
  (SigLIP + Qwen2). Their tokenizer is a byte-level BPE
  trained locally with ``tokenizers`` (``<image>`` special token, LLaVA-1.5 chat template).

This module registers the loader only; it defines no tool.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from visagent.tools.models import checked_config, register_loader

LLAVA_TYPES = ("llava", "llava_next", "llava_onevision", "video_llava")

log = logging.getLogger(__name__)

FAMILY = "planner"

#: the chat template of llava-hf/llava-1.5-7b-hf (images first, then text, per message)
LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}{% endif %}"
    "{% if message['content'] is string %}{{ message['content'] + ' ' }}{% else %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' '}}{% endfor %}"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)


@dataclass
class PlannerBundle:
    """A loaded planner model. ``context_length``: the text model's maximum positions (tokens)."""

    model: Any
    processor: Any
    model_type: str
    device: str
    dtype: Any
    context_length: int
    checkpoint: str = ""
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def tokenizer(self) -> Any:
        return self.processor.tokenizer


@register_loader(FAMILY, "transformers")
def load_planner(checkpoint: str, device: str, dtype: Any, options: dict[str, Any]) -> PlannerBundle:
    """Load a LLaVA-family checkpoint (folder or Hub id) with its processor and chat template."""
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

    from visagent.errors import UsageError

    if options.get("any_architecture"):
        config = AutoConfig.from_pretrained(checkpoint)
    else:
        hint = " (a LLaVA family model), or set models.planner.options.any_architecture: true"
        config = checked_config(checkpoint, "planner", LLAVA_TYPES, error=UsageError, hint=hint)
    model_type = config.model_type
    processor = AutoProcessor.from_pretrained(checkpoint)
    if getattr(processor, "chat_template", None) is None:
        raise UsageError(f"planner checkpoint {checkpoint} has no chat template in its processor")
    model = AutoModelForImageTextToText.from_pretrained(checkpoint, dtype=dtype)
    model.to(device).eval()
    text_config = getattr(config, "text_config", config)
    context = int(options.get("context_length") or getattr(text_config, "max_position_embeddings", 4096))
    return PlannerBundle(model, processor, model_type, device, dtype, context, checkpoint)
