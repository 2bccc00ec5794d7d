"""Repeat-ask wall time: ``visagent ask`` in-process (``--local``) against the same command
answered by a running ``visagent serve`` (client mode), on the tiny profile.

Each measurement is the whole command as a user runs it (a new process: Python start-up,
imports, and for ``--local`` the model loads), with a scripted plan (detect, then a final answer)
so that both do the same work. The server is started once on a free 127.0.0.1 port and warmed
with one request; then local and client runs alternate (same machine load for both).

    python -m benchmarks.client [--repeats 5] [--json out.json]

Numbers are for this machine and run only; compare the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.server import _free_port

PLAN = """
- {tool: detect, args: {image: img_0, labels: [cup], box_threshold: 0.0, text_threshold: 0.0}}
- {final: "There is 1 cup.", evidence: [det_1_0]}
"""


def _wait(url: str, proc: subprocess.Popen[bytes], timeout_s: float = 300) -> None:
    from visagent.client import probe

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with {proc.returncode}")
        if probe(url, timeout_s=1.0)[0] is not None:
            return
        time.sleep(0.2)
    raise SystemExit(f"the server did not answer at {url} within {timeout_s:g} s")


def _ask(cmd: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    ms = (time.perf_counter() - t0) * 1000
    if done.returncode != 0 or "There is 1 cup." not in done.stdout:
        raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr[-500:]}")
    return ms


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5, help="asks of each kind (default 5)")
    ap.add_argument("--json", type=Path, help="also write the results as JSON here")
    args = ap.parse_args(argv)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("VISAGENT_LOCAL", None)
    env.pop("VISAGENT_TOKEN", None)
    tmp = Path(tempfile.mkdtemp(prefix="visagent-bench-client-"))
    plan = tmp / "plan.yaml"
    plan.write_text(PLAN)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    script = Path(sys.executable).parent / "visagent"  # the command users run
    exe = [str(script)] if script.exists() else [sys.executable, "-m", "visagent.cli"]
    log = open(tmp / "server.log", "wb")  # noqa: SIM115 - closed below
    server = subprocess.Popen([*exe, "serve", "--profile", "tiny", "--port", str(port)], stdout=log, stderr=subprocess.STDOUT, env=env)
    ask = [*exe, "ask", "sample:coffee", "How many cups are there?", "--profile", "tiny", "--planner", f"script:{plan}"]
    try:
        _wait(url, server)
        first_ms = _ask([*ask, "--server", url], env)  # the server loads its models on the first request
        local, remote = [], []
        for _ in range(args.repeats):
            local.append(_ask([*ask, "--local"], env))
            remote.append(_ask([*ask, "--server", url], env))
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
    result: dict[str, Any] = {
        "repeats": args.repeats,
        "server_first_ask_ms": round(first_ms, 1),
        "local_ms": {"median": round(statistics.median(local), 1), "min": round(min(local), 1), "runs": [round(x, 1) for x in local]},
        "server_ms": {"median": round(statistics.median(remote), 1), "min": round(min(remote), 1), "runs": [round(x, 1) for x in remote]},
    }
    result["speedup"] = round(result["local_ms"]["median"] / result["server_ms"]["median"], 2)
    print(f"{'mode':>10} {'median s':>9} {'min s':>7}")
    for mode in ("local", "server"):
        r = result[f"{mode}_ms"]
        print(f"{mode:>10} {r['median'] / 1000:>9.2f} {r['min'] / 1000:>7.2f}")
    print(f"repeat ask with a running server: {result['speedup']:.1f}x faster (first ask, loading the server's models: {first_ms / 1000:.2f} s)")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
