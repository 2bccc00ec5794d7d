"""Registries of model loaders and tiny-checkpoint builders, filled by the tool modules.

- ``@register_loader(family, backend)`` registers ``loader(checkpoint, device, dtype, options)``
  returning the loaded bundle (model + processor ...). ``checkpoint`` is a local path or a Hub id
  already resolved by the agent; the loader calls ``from_pretrained`` / the official builder on it
  exactly as for a real checkpoint. ``dtype`` is a ``torch.dtype``.
- ``@register_tiny(name, backend="transformers")`` registers ``builder(folder: Path)`` that writes a
  tiny random checkpoint of the same architecture into ``folder`` (``save_pretrained`` or the
  official format), deterministically (fixed seed). ``tiny:NAME`` checkpoints are built with it.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from visagent.errors import ToolError

Loader = Callable[[str, str, Any, dict[str, Any]], Any]
TinyBuilder = Callable[[Path], None]

_LOADERS: dict[tuple[str, str], Loader] = {}
_TINY: dict[tuple[str, str], TinyBuilder] = {}


def register_loader(family: str, backend: str = "transformers") -> Callable[[Loader], Loader]:
    def deco(fn: Loader) -> Loader:
        _LOADERS[(family, backend)] = fn
        return fn

    return deco


def register_tiny(name: str, backend: str = "transformers") -> Callable[[TinyBuilder], TinyBuilder]:
    def deco(fn: TinyBuilder) -> TinyBuilder:
        _TINY[(name, backend)] = fn
        return fn

    return deco


def loader_for(family: str, backend: str) -> Loader | None:
    return _LOADERS.get((family, backend))


def tiny_builder(name: str, backend: str) -> TinyBuilder | None:
    return _TINY.get((name, backend)) or _TINY.get((name, "transformers"))


def loaders() -> dict[tuple[str, str], Loader]:
    return dict(_LOADERS)


def tiny_builders() -> dict[tuple[str, str], TinyBuilder]:
    return dict(_TINY)


def checked_config(checkpoint: str, what: str, supported: Collection[str], *, error: type[Exception] = ToolError, hint: str = "") -> Any:
    """The checkpoint's ``config.json`` (``AutoConfig``); the architecture is its ``model_type``, never
    the checkpoint's name. One that ``what`` cannot run is an ``error`` naming it and what is supported."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(checkpoint)
    if config.model_type not in supported:
        raise error(
            f"{what} checkpoint {checkpoint} has model_type '{config.model_type}'; supported: {', '.join(supported)}{hint}"
        )
    return config


def autocast(device: str, dtype: Any, enabled: bool = True) -> Any:
    """``torch.autocast`` to ``dtype`` on ``device`` when ``enabled`` and ``dtype`` is half precision
    (backends whose weights stay float32, e.g. the official builders), else a no-op context."""
    import contextlib

    import torch

    if enabled and dtype in (torch.float16, torch.bfloat16):
        return torch.autocast(device_type=torch.device(device).type, dtype=dtype)
    return contextlib.nullcontext()


def to_device(inputs: Any, device: str, dtype: Any) -> dict[str, Any]:
    """A processor's tensors on ``device``; floating-point ones also cast to ``dtype``."""
    return {k: (v.to(device, dtype) if v.is_floating_point() else v.to(device)) for k, v in inputs.items()}


class _Direct:
    """``batched`` for a context without batchers: each item is a batch of one under the model lock."""

    def __init__(self, bundle: Any) -> None:
        self.model = bundle

    def submit(self, op: str, item: Any) -> Any:
        return getattr(self.model, op)([item])[0]


@contextmanager
def batched(ctx: Any, family: str) -> Iterator[Any]:
    """``with batched(ctx, "detect") as m: m.submit("detect_many", request)``: through the context's
    batcher (``ctx.batched``, calls of concurrent runs gathered into one forward) where it has one,
    else ``bundle.<op>([request])[0]`` under ``ctx.model(family)``. ``m.model``: the loaded bundle
    (read its attributes; run it only through ``submit``)."""
    if hasattr(ctx, "batched"):
        with ctx.batched(family) as handle:
            yield handle
    else:
        with ctx.model(family) as bundle:
            yield _Direct(bundle)
