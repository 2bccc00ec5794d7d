"""Converting original-format LLaVA / LLaVA-Plus checkpoints to transformers llava checkpoints.

The original codebase (``LlavaLlamaForCausalLM``) saves a Llama language model with the projector
inside it, and names the vision tower in ``config.json``::

    config.json   architectures ["LlavaLlamaForCausalLM"], the Llama fields, and
                  mm_vision_tower ("openai/clip-vit-large-patch14-336"), mm_hidden_size,
                  mm_projector_type ("mlp2x_gelu"), mm_vision_select_layer (-2),
                  mm_vision_select_feature ("patch" | "cls_patch")
    weights       model.embed_tokens.*, model.layers.*, model.norm.*, lm_head.*,
                  model.mm_projector.0.* / .2.* (Linear, GELU, Linear), and sometimes
                  model.vision_tower.vision_tower.* (the CLIP vision model)
    tokenizer     the Llama tokenizer, without an image token (the code splices -200 in)

``convert_llava(src, dst)`` writes a ``LlavaForConditionalGeneration`` checkpoint with its
``LlavaProcessor`` (the tokenizer with ``<image>`` added, the tower's CLIP image processor, the
LLaVA v1 conversation as chat template). Key mapping (the installed transformers' layout):
``model.*`` -> ``model.language_model.*``, ``lm_head`` stays, ``model.mm_projector.0`` ->
``model.multi_modal_projector.linear_1``, ``.2`` -> ``linear_2``; the vision tower comes from the
saved ``model.vision_tower.vision_tower.*`` weights when present, else from the checkpoint named
by ``mm_vision_tower`` (or ``vision_tower=``, a local folder). New token rows (``<image>``, a pad
token when there is none) are the mean of the existing embeddings.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from visagent.errors import UsageError

log = logging.getLogger(__name__)

#: the LLaVA v1 conversation (``conv_llava_v1`` of the original codebase): system, then
#: ``USER: ... ASSISTANT: ...</s>`` turns, images as ``<image>\n`` before the text
LLAVA_V1_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)
LLAVA_V1_CHAT_TEMPLATE = (
    "{% if messages and messages[0]['role'] == 'system' %}"
    "{% set system = messages[0]['content'] if messages[0]['content'] is string else "
    "(messages[0]['content'] | selectattr('type', 'equalto', 'text') | map(attribute='text') | join(' ')) %}"
    "{% set messages = messages[1:] %}{% else %}{% set system = '" + LLAVA_V1_SYSTEM.replace("'", "\\'") + "' %}{% endif %}"
    "{{ system + ' ' }}"
    "{% for message in messages %}{{ message['role'].upper() + ': ' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{{ message['content'] | selectattr('type', 'equalto', 'text') | map(attribute='text') | join(' ') }}{% endif %}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% else %}{{ ' ' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)

_LLAMA_KEYS = (
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "hidden_act", "max_position_embeddings", "rms_norm_eps", "rope_theta",
    "rope_scaling", "attention_bias", "tie_word_embeddings", "bos_token_id", "eos_token_id", "pad_token_id",
    "initializer_range", "pretraining_tp", "mlp_bias", "head_dim",
)  # fmt: skip
_TOWER_PREFIX = "model.vision_tower.vision_tower."


def read_original_config(src: Path) -> dict[str, Any]:
    """``config.json`` of an original-format checkpoint (UsageError when it is not one)."""
    path = src / "config.json"
    if not path.is_file():
        raise UsageError(f"{src}: no config.json (not a LLaVA checkpoint folder)")
    cfg = json.loads(path.read_text())
    if "mm_vision_tower" not in cfg and "mm_hidden_size" not in cfg:
        raise UsageError(f"{src}: config.json has no mm_vision_tower / mm_hidden_size: not an original-format LLaVA checkpoint")
    return cfg


def load_state_dict(src: Path) -> dict[str, Any]:
    """Every tensor of the checkpoint's ``*.safetensors`` (else ``*.bin``) shards."""
    import torch

    shards = sorted(src.glob("*.safetensors"))
    state: dict[str, Any] = {}
    if shards:
        from safetensors.torch import load_file

        for shard in shards:
            state.update(load_file(str(shard)))
    else:
        bins = sorted(p for p in src.glob("*.bin") if p.name != "training_args.bin")
        if not bins:
            raise UsageError(f"{src}: no *.safetensors or *.bin weights")
        for shard in bins:
            state.update(torch.load(shard, map_location="cpu", weights_only=True))
    return state


def _projector(cfg: dict[str, Any]) -> None:
    kind = cfg.get("mm_projector_type", "linear")
    if kind != "mlp2x_gelu":
        raise UsageError(f"mm_projector_type '{kind}' has no transformers llava equivalent; supported: mlp2x_gelu")


def _vision(cfg: dict[str, Any], vision_tower: str | Path | None, state: dict[str, Any]) -> tuple[Any, Any, dict[str, Any] | None, str]:
    """(CLIPVisionConfig, CLIPImageProcessor, tower weights from ``state`` or None: load by name, the name)."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig

    name = str(vision_tower or cfg.get("mm_vision_tower") or cfg.get("vision_tower") or "")
    if not name:
        raise UsageError("config.json names no mm_vision_tower: pass --vision-tower")
    try:
        vcfg = CLIPVisionConfig.from_pretrained(name)
    except (OSError, ValueError) as exc:
        raise UsageError(f"vision tower '{name}' could not be loaded ({type(exc).__name__}); pass --vision-tower with a local folder") from None
    try:
        image_processor = CLIPImageProcessor.from_pretrained(name)
    except (OSError, ValueError):
        size = vcfg.image_size
        image_processor = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    saved = {k[len(_TOWER_PREFIX) :]: v for k, v in state.items() if k.startswith(_TOWER_PREFIX)}
    return vcfg, image_processor, (saved or None), name


def convert_llava(src: str | Path, dst: str | Path, vision_tower: str | Path | None = None, dtype: str | None = None) -> Path:
    """Convert the original-format checkpoint ``src`` into a transformers llava checkpoint at
    ``dst`` (model + processor); returns ``dst``. ``vision_tower``: a CLIP checkpoint (name or
    local folder) instead of ``mm_vision_tower``; ``dtype``: float16 | bfloat16 | float32 (default:
    the source's ``torch_dtype``)."""
    import torch
    from transformers import (
        AutoTokenizer,
        CLIPVisionModel,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    src, dst = Path(src), Path(dst)
    cfg = read_original_config(src)
    _projector(cfg)
    state = load_state_dict(src)
    vcfg, image_processor, saved_tower, tower_name = _vision(cfg, vision_tower, state)

    tok = AutoTokenizer.from_pretrained(str(src))
    added = tok.add_special_tokens({"additional_special_tokens": ["<image>"]}) if "<image>" not in tok.get_vocab() else 0
    if tok.pad_token is None:
        added += tok.add_special_tokens({"pad_token": "<pad>"})
    tok.image_token = "<image>"
    image_token_id = tok.convert_tokens_to_ids("<image>")

    text_kwargs = {k: cfg[k] for k in _LLAMA_KEYS if k in cfg}
    text_cfg = LlamaConfig(**text_kwargs)
    old_vocab = int(state["model.embed_tokens.weight"].shape[0])
    new_vocab = max(old_vocab, len(tok))
    text_cfg.vocab_size = new_vocab
    text_cfg.pad_token_id = tok.pad_token_id
    select = cfg.get("mm_vision_select_feature", "patch")
    if select not in ("patch", "cls_patch"):
        raise UsageError(f"mm_vision_select_feature '{select}' is not supported; supported: patch, cls_patch")
    n_patches = (vcfg.image_size // vcfg.patch_size) ** 2
    config = LlavaConfig(
        vision_config=vcfg,
        text_config=text_cfg,
        image_token_id=image_token_id,
        projector_hidden_act="gelu",
        vision_feature_layer=int(cfg.get("mm_vision_select_layer", -2)),
        vision_feature_select_strategy="default" if select == "patch" else "full",
        image_seq_length=n_patches + (select == "cls_patch"),
        multimodal_projector_bias=True,
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
    )
    with torch.device("meta"):
        model = LlavaForConditionalGeneration(config)
    target = model.state_dict()

    out: dict[str, Any] = {}
    for key, value in state.items():
        if key.startswith(_TOWER_PREFIX) or key.startswith("model.vision_tower."):
            continue
        if key.startswith("model.mm_projector."):
            new = key.replace("model.mm_projector.0.", "model.multi_modal_projector.linear_1.").replace(
                "model.mm_projector.2.", "model.multi_modal_projector.linear_2."
            )
        elif key.startswith("model."):
            new = "model.language_model." + key[len("model.") :]
        else:
            new = key  # lm_head.*
        if new not in target:
            if "rotary_emb.inv_freq" in key:
                continue
            raise UsageError(f"{src}: weight '{key}' has no place in a transformers llava model (mapped to '{new}')")
        out[new] = value
    for key in ("model.language_model.embed_tokens.weight", "lm_head.weight"):
        if key in out and new_vocab > out[key].shape[0]:
            w = out[key]
            extra = w.float().mean(dim=0, keepdim=True).to(w.dtype).expand(new_vocab - w.shape[0], -1)
            out[key] = torch.cat([w, extra], dim=0)
    if saved_tower is not None:
        tower_state = saved_tower
    else:
        tower_state = CLIPVisionModel.from_pretrained(tower_name).state_dict()
    tower_keys = {k[len("model.vision_tower.") :] for k in target if k.startswith("model.vision_tower.")}
    for key, value in tower_state.items():
        short = key
        while short not in tower_keys and "." in short:
            short = short.split(".", 1)[1]  # vision_model.embeddings... -> embeddings...
        if short in tower_keys:
            out["model.vision_tower." + short] = value
    missing = [k for k in target if k not in out and not (config.tie_word_embeddings and k == "lm_head.weight")]
    if missing:
        raise UsageError(f"{src}: no weights for {len(missing)} parameters of the llava model, e.g. {missing[0]}")

    want = dtype or str(cfg.get("torch_dtype") or cfg.get("dtype") or "float32")
    torch_dtype = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}.get(want.replace("torch.", ""))
    if torch_dtype is None:
        raise UsageError(f"dtype must be float16, bfloat16 or float32, got '{want}'")
    model.load_state_dict({k: v.to(torch_dtype) for k, v in out.items()}, strict=False, assign=True)
    model.to(torch_dtype)
    if config.tie_word_embeddings:
        model.tie_weights()
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    dst.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(dst)
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tok,
        chat_template=LLAVA_V1_CHAT_TEMPLATE,
        patch_size=vcfg.patch_size,
        vision_feature_select_strategy=config.vision_feature_select_strategy,
        num_additional_image_tokens=1,
    )
    processor.save_pretrained(dst)
    log.info("converted %s -> %s (%d tokens added, vision tower %s)", src, dst, added, "saved weights" if saved_tower else tower_name)
    return dst
