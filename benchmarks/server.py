"""HTTP server throughput and latency on tiny checkpoints, and its overhead over ``agent.ask``.

Starts ``visagent serve --profile tiny`` (a scripted plan: the real segment tool on the tiny SAM,
then a final answer) on a free 127.0.0.1 port, then for each client concurrency level (default
1, 8, 32) sends ``--requests`` multipart asks (a 64x48 PNG each) and reports requests/s and
p50 / p95 latency. Then the same plan runs in-process with ``agent.ask`` on the same image,
alternating with single HTTP requests (same machine load for both): overhead = median of the
per-pair differences, ratio = server p50 / direct p50.

    python -m benchmarks.server [--requests 64] [--levels 1 8 32] [--server-concurrency 2] [--json out.json]

All traffic goes to 127.0.0.1. Numbers are for this machine and run only; compare ratios.
"""

from __future__ import annotations

import argparse
import asyncio
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
from pathlib import Path
from typing import Any

PLAN = """
- tool: segment
  args: {image: img_0, boxes: [[2, 2, 30, 20]]}
- final: one thing, segmented
  evidence: [mask_1_0]
"""

log = logging.getLogger("benchmarks.server")


def _png() -> bytes:
    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[k]


def paired(base: str, plan_path: Path, image: Path, data: bytes, n: int) -> tuple[list[float], list[float]]:
    """Alternating samples under the same machine load: (``agent.ask`` in this process, one
    HTTP request to the server) latencies in ms, after warm-up."""
    import httpx

    from visagent.agent import Agent
    from visagent.config import load_config

    agent = Agent(load_config(profile="tiny"), planner=f"script:{plan_path}")
    direct_ms: list[float] = []
    server_ms: list[float] = []
    with httpx.Client(base_url=base, timeout=300) as client:
        for i in range(n + 3):
            t0 = time.perf_counter()
            ans = agent.ask(f"question {i}", [str(image)])
            d = (time.perf_counter() - t0) * 1000
            assert ans.ok, ans.error
            t0 = time.perf_counter()
            r = client.post("/v1/ask", files={"files": ("img.png", data, "image/png")}, data={"question": f"question {i}"})
            s = (time.perf_counter() - t0) * 1000
            assert r.status_code == 200 and r.json()["status"] == "answered", r.text[:300]
            if i >= 3:  # the first rounds warm both up
                direct_ms.append(d)
                server_ms.append(s)
    return direct_ms, server_ms


async def level(base: str, data: bytes, concurrency: int, n: int) -> dict[str, Any]:
    import httpx

    latencies: list[float] = []
    failures = 0
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(n):
        queue.put_nowait(i)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, timeout=300, limits=limits) as client:

        async def worker() -> None:
            nonlocal failures
            while not queue.empty():
                i = queue.get_nowait()
                t0 = time.perf_counter()
                r = await client.post("/v1/ask", files={"files": ("img.png", data, "image/png")}, data={"question": f"question {i}"})
                latencies.append((time.perf_counter() - t0) * 1000)
                if r.status_code != 200 or r.json().get("status") != "answered":
                    failures += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    return {
        "concurrency": concurrency,
        "requests": n,
        "failures": failures,
        "rps": round(n / wall, 2),
        "p50_ms": round(statistics.median(latencies), 2),
        "p95_ms": round(_pct(latencies, 0.95), 2),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=64, help="requests per concurrency level")
    ap.add_argument("--levels", type=int, nargs="+", default=[1, 8, 32], help="client concurrency levels")
    ap.add_argument("--server-concurrency", type=int, default=2, help="the server's max_concurrency (runs at once)")
    ap.add_argument("--json", type=Path, help="also write the results as JSON here")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

    tmp = Path(tempfile.mkdtemp(prefix="visagent-bench-"))
    plan = tmp / "plan.yaml"
    plan.write_text(PLAN)
    data = _png()
    image = tmp / "img.png"
    image.write_bytes(data)

    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "visagent.cli", "serve", "--profile", "tiny", "--planner", f"script:{plan}", "--port", str(port),
           "--max-concurrency", str(args.server_concurrency), "--max-queue", str(max(args.levels) + 8)]  # fmt: skip
    server_log = open(tmp / "server.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(cmd, stdout=server_log, stderr=subprocess.STDOUT)
    try:
        import httpx

        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                sys.stderr.write((tmp / "server.log").read_text()[-2000:])
                raise SystemExit("the server did not start")
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        warm = httpx.post(f"{base}/v1/ask", files={"files": ("img.png", data)}, data={"question": "warm up"}, timeout=300)
        if warm.status_code != 200 or warm.json()["status"] != "answered":
            raise SystemExit(f"warm-up request failed: {warm.status_code} {warm.text[:300]}")
        asyncio.run(level(base, data, 1, 5))  # warm-up
        results = [asyncio.run(level(base, data, c, args.requests)) for c in args.levels]
        direct_ms, server_ms = paired(base, plan, image, data, min(args.requests, 32))
        pool = httpx.get(f"{base}/v1/models", timeout=30).json()["pool"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        server_log.close()

    direct_p50 = statistics.median(direct_ms)
    server_p50 = statistics.median(server_ms)
    summary = {
        "levels": results,
        "direct_p50_ms": round(direct_p50, 2),
        "server_p50_ms_at_1": round(server_p50, 2),
        "overhead_ms": round(statistics.median(s - d for s, d in zip(server_ms, direct_ms, strict=True)), 2),
        "overhead_ratio": round(server_p50 / direct_p50, 3),
        "server_concurrency": args.server_concurrency,
        "segment_model_loads": [m["loads"] for m in pool["models"] if m["family"] == "segment"],
    }
    print(f"{'clients':>8} {'requests':>9} {'fail':>5} {'req/s':>8} {'p50 ms':>9} {'p95 ms':>9}")
    for r in results:
        print(f"{r['concurrency']:>8} {r['requests']:>9} {r['failures']:>5} {r['rps']:>8.2f} {r['p50_ms']:>9.2f} {r['p95_ms']:>9.2f}")
    print(
        f"paired: agent.ask p50 {direct_p50:.2f} ms; server p50 {server_p50:.2f} ms; "
        f"overhead {summary['overhead_ms']:.2f} ms per request (ratio {summary['overhead_ratio']:.3f}); "
        f"segment model loads in the server: {summary['segment_model_loads']}"
    )
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    return 0 if all(r["failures"] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
