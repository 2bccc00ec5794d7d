"""Ray Serve modes of ``benchmarks.serving``: ``ray-1`` and ``ray-2``.

Each starts ``visagent serve --ray`` in a subprocess (a local Ray instance on 127.0.0.1, no
dashboard, a small object store) with the tiny profile and the benchmark's plan: the served
families (``detect``, the plan's only model) get 1 or 2 replicas, each with a tenth of a CPU
reserved (so every replica fits on a small machine), the agent loop runs in one ingress replica.
Batch sizes come from the ingress' ``GET /v1/models`` (``pool.deployments.<family>.batch_sizes``:
calls per batch size, turned into batches per size); peak memory sums the peak RSS of the server
process and its children (Ray's processes and every replica).
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

FAMILIES = ["detect"]


def _batch_stats(base: str) -> dict[str, Any]:
    """``{"sizes": {"n": batches}}`` over the served families (a batch of n calls is seen n times)."""
    import httpx

    deployments = httpx.get(f"{base}/v1/models", timeout=30).json()["pool"].get("deployments") or {}
    sizes: dict[str, int] = {}
    for stats in deployments.values():
        for n, calls in (stats.get("batch_sizes") or {}).items():
            sizes[n] = sizes.get(n, 0) + round(int(calls) / max(1, int(n)))
    return {"sizes": sizes}


def _wait_replicas(base: str, replicas: int, timeout_s: float = 300) -> None:
    """Until every served family reports ``replicas`` running replicas (``/healthz``)."""
    import time

    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        deployments = httpx.get(f"{base}/healthz", timeout=30).json().get("deployments") or {}
        if deployments and all(d.get("replicas") == {"RUNNING": replicas} for d in deployments.values()):
            return
        time.sleep(1.0)
    raise SystemExit(f"the Ray Serve deployments at {base} did not reach {replicas} running replicas each")


def ray_mode(replicas: int) -> Any:
    @contextlib.contextmanager
    def mode(setup: Any) -> Iterator[Any]:
        from benchmarks.serving import Served, free_port, wait_up

        tag = f"ray-{replicas}"
        models = {f: {"max_batch": setup.max_batch, "batch_wait_ms": setup.batch_wait_ms} for f in FAMILIES}
        config = setup.tmp / f"{tag}.yaml"
        config.write_text(json.dumps({
            "models": models,
            "server": {
                "max_concurrency": setup.server_concurrency, "max_queue": setup.max_queue, "timeout_s": 600,
                "max_connections_per_client": setup.max_queue + 8, "max_requests_per_client": 1_000_000,
            },
            "ray": {
                "num_cpus": 2, "object_store_memory": 200 * 1024 * 1024, "families": FAMILIES,
                "default": {"num_cpus": 0.1, "num_replicas": replicas}, "ingress": {"num_cpus": 0.1},
            },
        }))  # fmt: skip
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        cmd = [sys.executable, "-m", "visagent.cli", "serve", "--ray", "--profile", "tiny", "--config", str(config),
               "--planner", f"script:{setup.plan}", "--port", str(port)]  # fmt: skip
        log_path = setup.tmp / f"{tag}.log"
        with open(log_path, "wb") as fh:
            proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT)
            try:
                wait_up(base, proc, log_path, timeout_s=600)
                _wait_replicas(base, replicas)
                yield Served(base, lambda: [proc.pid], lambda: _batch_stats(base))
            finally:
                proc.terminate()  # serve --ray shuts Serve and its Ray instance down on SIGTERM
                try:
                    proc.wait(timeout=90)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)

    return mode


def register(modes: dict[str, Any], setup_cls: Any = None) -> None:
    """Add ``ray-1`` and ``ray-2`` to ``benchmarks.serving.MODES`` (only where Ray is installed)."""
    import importlib.util

    if importlib.util.find_spec("ray") is None:
        return
    modes["ray-1"] = ray_mode(1)
    modes["ray-2"] = ray_mode(2)
