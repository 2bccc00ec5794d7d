"""Serving throughput: batching across runs against one call per forward, through the HTTP API.

Each mode starts a server on a free 127.0.0.1 port with the tiny profile and a detection-heavy
scripted plan (``detect`` and ``count`` calls on the request's image, then a final answer), then
for each client concurrency level (default 1, 8, 32) sends ``--requests`` multipart asks (a small
PNG each) and reports requests/s, p50 / p95 latency, the batch sizes the server observed during
that level (from ``GET /v1/models``: the pool's batch statistics, differenced per level) and the
server's peak memory (peak RSS of its processes). All modes' servers run at once on the same
machine, and each level is measured in ``--rounds`` rounds with the modes taking turns (alternating
order), so every mode sees the same machine load: compare their ratios, not absolute numbers.

Modes (``MODES``; ``--modes`` picks some):

- ``unbatched``: one process, ``models.<family>.max_batch: 1`` (each call its own forward, one at
  a time per model — what the model lock did).
- ``batched``: one process, ``max_batch`` ``--max-batch`` (8) and ``batch_wait_ms``
  ``--batch-wait-ms`` (2).

Both run with ``server.max_concurrency`` ``--server-concurrency`` (32 by default: with the default
of 2 runs at once, at most 2 calls could ever meet in a batch).

Servers run with torch's intra-op threads as they are (one per core; ``--torch-threads N`` sets
``OMP_NUM_THREADS``): a batch of 8 keeps the cores busier than one image does, which is part of
what batching buys. On a small CPU that other processes share, use ``--torch-threads 1``: one
thread per core can then make a forward tens of times slower whenever a core is taken.

Measured on a quiet 2-core CPU (tiny profile, 4 detector calls per request, 48 requests x 3
rounds per level): batched / unbatched throughput 0.96-1.04x at 1 client, 2.06-2.32x at 8
(mean batch 4.0-4.1), 2.60-2.74x at 32 (mean batch 7.5); with ``--torch-threads 1`` 1.00x /
1.98x / 1.86x.

Adding modes: ``MODES`` maps a name to a ``Mode``: a callable ``mode(setup) -> context manager``
yielding a ``Served`` (``base`` URL, ``pids()`` of its processes for the memory reading, optional
``batch_stats()`` returning ``{"sizes": {"n": count}}``). A module ``benchmarks/_serving_ray.py``
defining ``register(modes: dict, setup_cls)`` is imported if present and adds its modes
(``ray-1``, ``ray-2``: Ray Serve with 1 and 2 replicas per tool); ``--modes`` then selects them.

    python -m benchmarks.serving [--calls 4] [--requests 32] [--levels 1 8 32] [--modes unbatched batched] [--json out.json]

Target on a CPU with the tiny profile: batched >= 2x unbatched throughput at 8 clients.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import importlib.util
import io
import json
import logging
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ContextManager

log = logging.getLogger("benchmarks.serving")

#: detection-heavy: ``calls`` detector calls per request (detect and count in turn), then a final
_STEPS = [
    {"tool": "detect", "args": {"image": "img_0", "labels": ["cat", "dog"]}},
    {"tool": "count", "args": {"image": "img_0", "label": "coin"}},
    {"tool": "detect", "args": {"image": "img_0", "labels": ["cup"]}},
    {"tool": "count", "args": {"image": "img_0", "label": "person"}},
]


def plan(calls: int) -> list[dict[str, Any]]:
    """The scripted plan: ``calls`` detector calls (varied labels), then a final answer."""
    steps = [dict(_STEPS[i % len(_STEPS)]) for i in range(calls)]
    return steps + [{"final": "counted"}]


@dataclass
class Setup:
    """What every mode gets: a scratch folder, the plan file, the request image, the limits."""

    tmp: Path
    plan: Path
    image: bytes
    server_concurrency: int
    max_queue: int
    max_batch: int
    batch_wait_ms: float
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Served:
    """A running server: its URL, its process ids (for peak RSS) and, optionally, its batch sizes."""

    base: str
    pids: Callable[[], list[int]]
    batch_stats: Callable[[], dict[str, Any]] | None = None


Mode = Callable[[Setup], ContextManager[Served]]


def _png(w: int = 64, h: int = 48) -> bytes:
    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_up(base: str, proc: subprocess.Popen[bytes], log_path: Path, timeout_s: float = 180) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None or time.monotonic() > deadline:
            sys.stderr.write(log_path.read_text()[-2000:])
            raise SystemExit(f"the server at {base} did not start")
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.2)


def _pool_batch_stats(base: str) -> dict[str, Any]:
    import httpx

    return httpx.get(f"{base}/v1/models", timeout=30).json()["pool"].get("batching") or {}


def single_process(max_batch: int | None) -> Mode:
    """``visagent serve`` in a subprocess; ``max_batch`` None: the setup's ``max_batch``."""

    @contextlib.contextmanager
    def mode(setup: Setup) -> Iterator[Served]:
        mb = setup.max_batch if max_batch is None else max_batch
        models = {f: {"max_batch": mb, "batch_wait_ms": setup.batch_wait_ms} for f in ("detect", "caption", "vqa", "search", "segment")}
        tag = f"single-{mb}"
        config = setup.tmp / f"{tag}.yaml"
        config.write_text(json.dumps({"models": models, "server": {
            "max_concurrency": setup.server_concurrency, "max_queue": setup.max_queue, "timeout_s": 600,
            "max_connections_per_client": setup.max_queue + 8, "max_requests_per_client": 1_000_000,
        }}))  # fmt: skip
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        cmd = [sys.executable, "-m", "visagent.cli", "serve", "--profile", "tiny", "--config", str(config),
               "--planner", f"script:{setup.plan}", "--port", str(port)]  # fmt: skip
        log_path = setup.tmp / f"{tag}.log"
        with open(log_path, "wb") as fh:
            proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT)
            try:
                wait_up(base, proc, log_path)
                yield Served(base, lambda: [proc.pid], lambda: _pool_batch_stats(base))
            finally:
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)

    return mode


MODES: dict[str, Mode] = {"unbatched": single_process(1), "batched": single_process(None)}
if importlib.util.find_spec("benchmarks._serving_ray") is not None:  # Ray Serve modes live apart; see above
    importlib.import_module("benchmarks._serving_ray").register(MODES, Setup)


def peak_rss_bytes(pids: list[int]) -> int:
    """Sum over ``pids`` (and their children) of the peak resident set size (``VmHWM``)."""
    total = 0
    seen: set[int] = set()
    todo = list(pids)
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1]) * 1024
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            todo.extend(int(c) for c in children)
        except (OSError, ValueError):
            continue
    return total


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[k]


def _sizes(stats: dict[str, Any]) -> Counter[int]:
    return Counter({int(n): int(c) for n, c in (stats.get("sizes") or {}).items()})


async def level(base: str, data: bytes, concurrency: int, n: int) -> dict[str, Any]:
    """``n`` asks from ``concurrency`` clients: ``{latencies_ms, wall_s, failures}``."""
    import httpx

    latencies: list[float] = []
    failures: list[str] = []
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(n):
        queue.put_nowait(i)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, timeout=900, limits=limits) as client:

        async def worker() -> None:
            while not queue.empty():
                i = queue.get_nowait()
                t0 = time.perf_counter()
                r = await client.post("/v1/ask", files={"files": ("img.png", data, "image/png")}, data={"question": f"question {i}"})
                latencies.append((time.perf_counter() - t0) * 1000)
                if r.status_code != 200 or r.json().get("status") != "answered":
                    failures.append(f"{r.status_code} {r.text[:200]}")

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    if failures:
        log.warning("%d failed requests, e.g. %s", len(failures), failures[0])
    return {"latencies_ms": latencies, "wall_s": wall, "failures": len(failures)}


def _row(clients: int, parts: list[dict[str, Any]]) -> dict[str, Any]:
    latencies = [x for p in parts for x in p["latencies_ms"]]
    wall = sum(p["wall_s"] for p in parts)
    return {
        "clients": clients,
        "requests": len(latencies),
        "failures": sum(p["failures"] for p in parts),
        "rps": round(len(latencies) / wall, 3),
        "p50_ms": round(statistics.median(latencies), 1),
        "p95_ms": round(_pct(latencies, 0.95), 1),
    }


def run_modes(names: list[str], setup: Setup, levels: list[int], requests: int, rounds: int) -> list[dict[str, Any]]:
    """Every mode's server up at once (idle ones cost memory, not CPU); each level is measured in
    ``rounds`` rounds, the modes taking turns in alternating order, so all see the same machine load."""
    import httpx

    with contextlib.ExitStack() as stack:
        served = {name: stack.enter_context(MODES[name](setup)) for name in names}
        for name, srv in served.items():
            warm = httpx.post(f"{srv.base}/v1/ask", files={"files": ("img.png", setup.image)}, data={"question": "warm up"}, timeout=900)
            if warm.status_code != 200 or warm.json().get("status") != "answered":
                raise SystemExit(f"{name}: warm-up request failed: {warm.status_code} {warm.text[:300]}")
        rows: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
        for c in levels:
            per_round = max(c, -(-max(requests, c) // rounds))
            parts: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
            diffs: dict[str, Counter[int]] = {name: Counter() for name in names}
            for r in range(rounds):
                for name in names if r % 2 == 0 else list(reversed(names)):
                    srv = served[name]
                    before = _sizes(srv.batch_stats()) if srv.batch_stats else Counter()
                    parts[name].append(asyncio.run(level(srv.base, setup.image, c, per_round)))
                    if srv.batch_stats:
                        diffs[name] += _sizes(srv.batch_stats()) - before
            for name in names:
                row = _row(c, parts[name])
                if served[name].batch_stats:
                    diff = diffs[name]
                    batches = sum(diff.values())
                    items = sum(n * k for n, k in diff.items())
                    row["batches"] = batches
                    row["mean_batch"] = round(items / batches, 2) if batches else 0.0
                    row["max_batch"] = max(diff) if diff else 0
                    row["batch_sizes"] = {str(n): diff[n] for n in sorted(diff)}
                rows[name].append(row)
        peaks = {name: peak_rss_bytes(srv.pids()) for name, srv in served.items()}
    return [{"mode": name, "levels": rows[name], "peak_rss_mb": round(peaks[name] / 1e6, 1)} for name in names]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=4, help="detector calls per request (detect / count in turn)")
    ap.add_argument("--requests", type=int, default=32, help="requests per level and mode (at least one per client)")
    ap.add_argument("--rounds", type=int, default=4, help="rounds per level, the modes taking turns (same machine load for all)")
    ap.add_argument("--levels", type=int, nargs="+", default=[1, 8, 32], help="client concurrency levels")
    ap.add_argument("--modes", nargs="+", default=["unbatched", "batched"], help=f"modes to run (known: {', '.join(MODES)})")
    ap.add_argument("--server-concurrency", type=int, default=32, help="the servers' max_concurrency (runs at once)")
    ap.add_argument("--max-batch", type=int, default=8, help="max_batch of the batched modes")
    ap.add_argument("--batch-wait-ms", type=float, default=2.0, help="batch_wait_ms of the batched modes")
    ap.add_argument("--torch-threads", type=int, default=0, help="intra-op threads of every server process (OMP_NUM_THREADS; 0: leave as is, one per core; 1 on a shared machine)")
    ap.add_argument("--json", type=Path, help="also write the results as JSON here")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.torch_threads > 0:  # inherited by every mode's server processes
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = str(args.torch_threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    unknown = [m for m in args.modes if m not in MODES]
    if unknown:
        raise SystemExit(f"unknown mode {unknown[0]!r}; known: {', '.join(MODES)}")

    tmp = Path(tempfile.mkdtemp(prefix="visagent-bench-serving-"))
    plan_file = tmp / "plan.json"  # JSON is YAML: the scripted planner reads it
    plan_file.write_text(json.dumps(plan(args.calls)))
    setup = Setup(tmp, plan_file, _png(), args.server_concurrency, max(args.levels) * 2 + 8, args.max_batch, args.batch_wait_ms)
    results = run_modes(args.modes, setup, args.levels, args.requests, max(1, args.rounds))

    by_mode = {r["mode"]: {row["clients"]: row for row in r["levels"]} for r in results}
    ratios: dict[str, float] = {}
    if "unbatched" in by_mode:
        for mode, rows in by_mode.items():
            for c, row in rows.items():
                base = by_mode["unbatched"].get(c)
                if mode != "unbatched" and base:
                    ratios[f"{mode}/unbatched@{c}"] = round(row["rps"] / base["rps"], 3)
    summary = {
        "detect_calls_per_request": args.calls,
        "server_concurrency": args.server_concurrency,
        "max_batch": args.max_batch,
        "batch_wait_ms": args.batch_wait_ms,
        "cpus": os.cpu_count(),
        "torch_threads": args.torch_threads or None,
        "rounds": max(1, args.rounds),
        "results": results,
        "throughput_ratios": ratios,
    }
    print(f"{'mode':>10} {'clients':>7} {'req/s':>8} {'p50 ms':>9} {'p95 ms':>9} {'fail':>5} {'mean batch':>10} {'max':>4}  peak RSS")
    for r in results:
        for row in r["levels"]:
            print(
                f"{r['mode']:>10} {row['clients']:>7} {row['rps']:>8.2f} {row['p50_ms']:>9.1f} {row['p95_ms']:>9.1f} "
                f"{row['failures']:>5} {row.get('mean_batch', float('nan')):>10.2f} {row.get('max_batch', 0):>4}  {r['peak_rss_mb']:.0f} MB"
            )
    for k, v in ratios.items():
        print(f"throughput {k}: {v:.2f}x")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    return 0 if all(row["failures"] == 0 for r in results for row in r["levels"]) else 1


if __name__ == "__main__":
    sys.exit(main())
