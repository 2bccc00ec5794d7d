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
        _installed = True
        return added
