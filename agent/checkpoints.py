"""Checkpoint resolution: Hub id, local path, ``tiny:NAME`` or ``builtin`` -> something loadable.

Offline (``HF_HUB_OFFLINE=1``, or no network) a Hub id must already be in the Hugging Face cache;
otherwise a ``ModelUnavailableError`` names the checkpoint and how to provide it.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from visagent.errors import ModelUnavailableError, UsageError

log = logging.getLogger(__name__)

TINY_PREFIX = "tiny:"


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes", "on"}


def tiny_dir(name: str, backend: str, cache_dir: Path) -> Path:
    suffix = "" if backend == "transformers" else f"-{backend}"
    return cache_dir / "tiny" / f"{name}{suffix}"


def ensure_tiny(name: str, backend: str, cache_dir: Path) -> Path:
    """Build the tiny checkpoint ``name`` for ``backend`` once (process- and thread-safe)."""
    from filelock import FileLock

    import visagent.tools.tiny  # noqa: F401  registers the built-in builders
    from visagent.registry import load_model_modules
    from visagent.tools.models import tiny_builder, tiny_builders

    load_model_modules()  # plugins may register builders too
    builder = tiny_builder(name, backend)
    if builder is None:
        known = sorted({n for n, _ in tiny_builders()})
        raise UsageError(f"unknown tiny checkpoint 'tiny:{name}'; available: {', '.join(known)}")
    target = tiny_dir(name, backend, cache_dir)
    done = target / ".complete"
    if done.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if done.exists():
            return target
        tmp = target.with_name(target.name + ".building")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        log.info("building tiny checkpoint %s (%s) in %s", name, backend, target)
        builder(tmp)
        (tmp / ".complete").write_text("ok\n")
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
    return target


def resolve_checkpoint(
    checkpoint: str,
    *,
    family: str,
    backend: str,
    cache_dir: Path,
    revision: str | None = None,
) -> str:
    """Return a local path (or a Hub id when online) that the family's loader can open."""
    if checkpoint == "builtin":
        return checkpoint
    if checkpoint.startswith(TINY_PREFIX):
        return str(ensure_tiny(checkpoint[len(TINY_PREFIX) :], backend, cache_dir))
    local = Path(os.path.expanduser(checkpoint))
    if local.exists():
        return str(local.resolve())
    if checkpoint.startswith((".", "/", "~")) or checkpoint.endswith((".pth", ".pt", ".bin", ".safetensors")):
        raise ModelUnavailableError(
            f"checkpoint for {family} not found: {checkpoint} (set models.{family}.checkpoint to an existing path)"
        )
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(checkpoint, revision=revision, local_files_only=True)
    except Exception:  # noqa: BLE001 - not in the local cache
        if not hub_offline():
            return checkpoint  # from_pretrained downloads it
    raise ModelUnavailableError(
        f"checkpoint '{checkpoint}' for {family} is not available offline: download it where the "
        f"Hub is reachable (`hf download {checkpoint}`) into the Hugging Face cache, or set "
        f"models.{family}.checkpoint to a local folder in your config (or use --profile tiny)"
    )


def is_available(checkpoint: str, *, family: str, backend: str, cache_dir: Path) -> tuple[bool, str]:
    """Whether a checkpoint can be loaded now, without building or downloading anything."""
    if checkpoint == "builtin":
        return True, "ships with its package"
    if checkpoint.startswith(TINY_PREFIX):
        target = tiny_dir(checkpoint[len(TINY_PREFIX) :], backend, cache_dir)
        return True, "built" if (target / ".complete").exists() else "built on first use"
    if Path(os.path.expanduser(checkpoint)).exists():
        return True, "local path"
    try:
        from huggingface_hub import snapshot_download

        snapshot_download(checkpoint, local_files_only=True)
        return True, "in the Hugging Face cache"
    except Exception:  # noqa: BLE001
        return False, "not in the Hugging Face cache" + ("" if hub_offline() else " (downloaded on first use)")


_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt", ".onnx")


# backends whose weights ship inside a Python package (checkpoint "builtin")
_BUILTIN_PACKAGES = {"rapidocr": "rapidocr_onnxruntime"}


def weights_bytes(checkpoint: str, *, backend: str, cache_dir: Path) -> int | None:
    """Bytes of the weight files of a checkpoint that is on disk (None when it is not)."""
    if checkpoint == "builtin":
        from importlib.util import find_spec

        package = _BUILTIN_PACKAGES.get(backend)
        spec = find_spec(package) if package else None
        if spec is None or not spec.submodule_search_locations:
            return None
        path = Path(next(iter(spec.submodule_search_locations)))
    elif checkpoint.startswith(TINY_PREFIX):
        path = tiny_dir(checkpoint[len(TINY_PREFIX) :], backend, cache_dir)
    else:
        path = Path(os.path.expanduser(checkpoint))
        if not path.exists():
            try:
                from huggingface_hub import snapshot_download

                path = Path(snapshot_download(checkpoint, local_files_only=True))
            except Exception:  # noqa: BLE001 - not cached
                return None
    if path.is_file():
        return path.stat().st_size
    if not path.is_dir():
        return None
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and p.suffix in _WEIGHT_SUFFIXES)
