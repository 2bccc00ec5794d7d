"""Checkpoint resolution: Hub id, local path, ``tiny:NAME`` or ``builtin`` -> something loadable.

Offline (``HF_HUB_OFFLINE=1``, or no network) a Hub id must already be in the Hugging Face cache;
otherwise a ``ModelUnavailableError`` names the checkpoint and how to provide it. Online, a Hub id
missing from the cache is checked first with one quick reachability probe of the Hub endpoint
(``$HF_ENDPOINT``, through the proxy where one is set; a TCP connect of at most
``PROBE_TIMEOUT_S``): an unreachable Hub fails at once instead of after the download retries.
``missing_reason(...)`` gives that one-line reason (or None) without loading anything.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from pathlib import Path

from visagent.errors import ModelUnavailableError, UsageError

log = logging.getLogger(__name__)

TINY_PREFIX = "tiny:"


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes", "on"}


PROBE_TIMEOUT_S = 3.0
_PROBES: dict[str, tuple[float, bool]] = {}  # endpoint -> (when, reachable), kept PROBE_TTL_S
PROBE_TTL_S = 60.0


def hub_endpoint() -> str:
    """The Hub's URL (``$HF_ENDPOINT``, else https://huggingface.co), without credentials."""
    from urllib.parse import urlsplit

    url = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        return f"{parts.scheme}://{host}{f':{parts.port}' if parts.port else ''}{parts.path.rstrip('/')}"
    except ValueError:
        return "(unparseable HF_ENDPOINT)"


def hub_reachable(timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether a TCP connection to the Hub endpoint (or to the proxy for it) opens within ``timeout``
    seconds, name lookup included; the answer is kept for ``PROBE_TTL_S``."""
    import socket
    import urllib.request
    from urllib.parse import urlsplit

    url = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    cached = _PROBES.get(url)
    if cached is not None and time.monotonic() - cached[0] < PROBE_TTL_S:
        return cached[1]
    try:
        parts = urlsplit(url)
        host, port = parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)
        proxy = urllib.request.getproxies().get(parts.scheme) if host and not urllib.request.proxy_bypass(host) else None
        if proxy:
            pp = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
            host, port = pp.hostname or "", pp.port or (443 if pp.scheme == "https" else 80)
    except ValueError:
        host, port = "", 0
    result = [False]

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result[0] = True
        except (OSError, ValueError):
            pass

    if host:
        worker = threading.Thread(target=probe, name="visagent-hub-probe", daemon=True)
        worker.start()
        worker.join(timeout + 0.5)  # a name lookup that hangs counts as unreachable
    _PROBES[url] = (time.monotonic(), result[0])
    if not result[0]:
        log.info("the Hugging Face Hub (%s) cannot be reached", hub_endpoint())
    return result[0]


def how_to_get(checkpoint: str, family: str) -> str:
    """The ways to provide a Hub checkpoint, in one clause."""
    return (
        f"run `hf download {checkpoint}` on a machine with access and copy its ~/.cache/huggingface here, "
        f"or set models.{family}.checkpoint to a local folder holding it; or try the pipeline with --profile tiny"
    )


def _in_hub_cache(checkpoint: str, revision: str | None = None) -> str | None:
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(checkpoint, revision=revision, local_files_only=True)
    except Exception:  # noqa: BLE001 - not in the local cache (or not a Hub id at all)
        return None


def missing_reason(checkpoint: str, *, family: str, revision: str | None = None) -> str | None:
    """Why ``checkpoint`` cannot be loaded now (one line naming it and how to get it), or None when
    it is local, cached, ``builtin``, ``tiny:``, or downloadable (the Hub answers)."""
    if checkpoint == "builtin" or checkpoint.startswith(TINY_PREFIX):
        return None
    if Path(os.path.expanduser(checkpoint)).exists():
        return None
    if checkpoint.startswith((".", "/", "~")) or checkpoint.endswith((".pth", ".pt", ".bin", ".safetensors")):
        return f"checkpoint for {family} not found: {checkpoint} (set models.{family}.checkpoint to an existing path)"
    if _in_hub_cache(checkpoint, revision) is not None:
        return None
    if not hub_offline() and hub_reachable():
        return None
    return f"checkpoint '{checkpoint}' for {family} {hub_why()}: {how_to_get(checkpoint, family)}"


def hub_why() -> str:
    """Why a Hub checkpoint missing from the cache cannot be had now (offline, or the Hub unreachable)."""
    if hub_offline():
        value = os.environ.get("HF_HUB_OFFLINE")
        return f"is not available offline (not in the Hugging Face cache, and HF_HUB_OFFLINE={value} downloads nothing)"
    return f"is not in the Hugging Face cache, and the Hub ({hub_endpoint()}) cannot be reached"


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
    cached = None if checkpoint.startswith((".", "/", "~")) else _in_hub_cache(checkpoint, revision)
    if cached is not None:
        return cached
    reason = missing_reason(checkpoint, family=family, revision=revision)
    if reason is not None:
        raise ModelUnavailableError(reason)
    return checkpoint  # the Hub answers: from_pretrained downloads it


def is_available(checkpoint: str, *, family: str, backend: str, cache_dir: Path) -> tuple[bool, str]:
    """Whether a checkpoint can be loaded now, without building or downloading anything."""
    if checkpoint == "builtin":
        return True, "ships with its package"
    if checkpoint.startswith(TINY_PREFIX):
        target = tiny_dir(checkpoint[len(TINY_PREFIX) :], backend, cache_dir)
        return True, "built" if (target / ".complete").exists() else "built on first use"
    if Path(os.path.expanduser(checkpoint)).exists():
        return True, "local path"
    if _in_hub_cache(checkpoint) is not None:
        return True, "in the Hugging Face cache"
    if hub_offline():
        return False, "not in the Hugging Face cache"
    if checkpoint.startswith((".", "/", "~")) or not hub_reachable():
        return False, f"not in the Hugging Face cache (the Hub, {hub_endpoint()}, cannot be reached)"
    return False, "not in the Hugging Face cache (downloaded on first use)"


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
