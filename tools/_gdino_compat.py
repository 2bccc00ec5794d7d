"""Compatibility of groundingdino-py 0.4 with transformers 5.

groundingdino's ``BertModelWarper`` takes three helpers from the ``BertModel`` it wraps —
``get_extended_attention_mask``, ``invert_attention_mask`` and ``get_head_mask`` — which
transformers 5 removed from its models. ``install()`` adds them back to ``transformers.BertModel``
(only where they are missing, so it is a no-op on transformers 4) with the transformers 4
semantics:

- ``get_extended_attention_mask(mask, input_shape, device=None, dtype=None)``: a 0/1 mask of shape
  (B, L) or (B, L, L) -> an additive float mask (B, 1, 1, L) or (B, 1, L, L) that is 0 where
  attention is allowed and the dtype's minimum where it is not (causal for decoders).
- ``invert_attention_mask(mask)``: the same for an encoder (cross-attention) mask.
- ``get_head_mask(head_mask, num_hidden_layers)``: ``[None] * num_hidden_layers`` when no head
  mask is given, else the mask broadcast to (layers, B, heads, L, L).

From transformers 5.2x on, BERT's internals changed too: ``BertEmbeddings.forward`` takes
``cache_length`` instead of ``past_key_values_length``, the encoder takes ``cache`` and returns no
``past_key_values``. groundingdino's ``BertModelWarper.forward`` calls those internals with the
transformers 4 names, so ``install()`` also replaces it with ``warper_forward``: the same
computation for what Grounding DINO uses of it (an encoder-only BERT, no cache, a 2D or 3D
self-attention mask, ``position_ids``), through arguments every transformers 5 release accepts
(embeddings by keyword without a cache length; encoder with the hidden states and the additive
mask only). Its ``last_hidden_state`` equals ``BertModel``'s own for a 2D mask (tested).

Nothing else of transformers or groundingdino is changed.
"""

from __future__ import annotations

import threading
from typing import Any

_lock = threading.Lock()
_installed = False


def _model_dtype(module: Any, dtype: Any = None) -> Any:
    import torch

    if dtype is not None:
        return dtype
    for param in module.parameters():
        if param.is_floating_point():
            return param.dtype
    return torch.float32


def get_extended_attention_mask(
    self: Any, attention_mask: Any, input_shape: tuple[int, ...], device: Any = None, dtype: Any = None
) -> Any:
    import torch

    dtype = _model_dtype(self, dtype)
    if attention_mask.dim() == 3:
        extended = attention_mask[:, None, :, :]
    elif attention_mask.dim() == 2:
        if getattr(self.config, "is_decoder", False):
            batch, length = input_shape[0], input_shape[1]
            seq = torch.arange(length, device=attention_mask.device)
            causal = (seq[None, None, :].repeat(batch, length, 1) <= seq[None, :, None]).to(attention_mask.dtype)
            if causal.shape[2] < attention_mask.shape[1]:  # cached prefix
                prefix = attention_mask.shape[1] - causal.shape[2]
                ones = torch.ones((batch, length, prefix), device=attention_mask.device, dtype=causal.dtype)
                causal = torch.cat([ones, causal], dim=-1)
            extended = causal[:, None, :, :] * attention_mask[:, None, None, :]
        else:
            extended = attention_mask[:, None, None, :]
    else:
        raise ValueError(
            f"wrong shape for input_ids (shape {tuple(input_shape)}) or attention_mask (shape {tuple(attention_mask.shape)})"
        )
    extended = extended.to(dtype=dtype)
    return (1.0 - extended) * torch.finfo(dtype).min


def invert_attention_mask(self: Any, encoder_attention_mask: Any) -> Any:
    import torch

    dtype = _model_dtype(self)
    if encoder_attention_mask.dim() == 3:
        extended = encoder_attention_mask[:, None, :, :]
    else:
        extended = encoder_attention_mask[:, None, None, :]
    extended = extended.to(dtype=dtype)
    return (1.0 - extended) * torch.finfo(dtype).min


def get_head_mask(self: Any, head_mask: Any, num_hidden_layers: int, is_attention_chunked: bool = False) -> Any:
    if head_mask is None:
        return [None] * num_hidden_layers
    if head_mask.dim() == 1:
        head_mask = head_mask[None, None, :, None, None].expand(num_hidden_layers, -1, -1, -1, -1)
    elif head_mask.dim() == 2:
        head_mask = head_mask[:, None, :, None, None]
    if is_attention_chunked:
        head_mask = head_mask.unsqueeze(-1)
    return head_mask.to(dtype=_model_dtype(self))


_IGNORED_FLAGS = ("return_dict", "output_attentions", "output_hidden_states", "use_cache")


def warper_forward(
    self: Any,
    input_ids: Any = None,
    attention_mask: Any = None,
    token_type_ids: Any = None,
    position_ids: Any = None,
    inputs_embeds: Any = None,
    **rest: Any,
) -> Any:
    """``BertModelWarper.forward`` for an encoder-only BERT without a cache (see the module doc).
    Output flags (``return_dict``, ``output_*``, ``use_cache``) are accepted and ignored; anything
    this forward does not compute (head masks, cross-attention, a cache) is refused."""
    import torch
    from transformers.modeling_outputs import BaseModelOutputWithPoolingAndCrossAttentions

    unsupported = sorted(k for k, v in rest.items() if v is not None and k not in _IGNORED_FLAGS)
    if unsupported:
        raise ValueError(f"the transformers-5 BERT wrapper does not support {', '.join(unsupported)}")
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("give exactly one of input_ids and inputs_embeds")
    shape = tuple(input_ids.shape if input_ids is not None else inputs_embeds.shape[:-1])
    device = input_ids.device if input_ids is not None else inputs_embeds.device
    if attention_mask is None:
        attention_mask = torch.ones(shape, device=device)
    if token_type_ids is None:
        token_type_ids = torch.zeros(shape, dtype=torch.long, device=device)
    hidden = self.embeddings(
        input_ids=input_ids, position_ids=position_ids, token_type_ids=token_type_ids, inputs_embeds=inputs_embeds
    )
    mask = get_extended_attention_mask(self, attention_mask, shape, device, dtype=hidden.dtype)
    sequence = self.encoder(hidden, attention_mask=mask)[0]
    pooled = self.pooler(sequence) if self.pooler is not None else None
    return BaseModelOutputWithPoolingAndCrossAttentions(last_hidden_state=sequence, pooler_output=pooled)


_HELPERS = {
    "get_extended_attention_mask": get_extended_attention_mask,
    "invert_attention_mask": invert_attention_mask,
    "get_head_mask": get_head_mask,
}


def install() -> list[str]:
    """Add the missing helpers to ``transformers.BertModel``; returns the names added (once)."""
    global _installed
    with _lock:
        if _installed:
            return []
        from transformers import BertModel

        added = []
        for name, fn in _HELPERS.items():
            if not hasattr(BertModel, name):
                setattr(BertModel, name, fn)
                added.append(name)
        if added:  # transformers 5: its BERT internals no longer match the warper's calls
            from groundingdino.models.GroundingDINO.bertwarper import BertModelWarper

            BertModelWarper.forward = warper_forward
            added.append("BertModelWarper.forward")
        _installed = True
        return added
