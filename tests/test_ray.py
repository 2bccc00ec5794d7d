"""Scale-out on Ray Serve (``visagent.ray_serve``) through the real HTTP API.

One local Ray instance on 127.0.0.1 for the module (small object store, no dashboard, stopped at
the end), the tiny profile: ``detect`` served by 2 replicas, ``segment`` by 1, the agent loop as
the ingress; every request carries a scripted plan. The same requests go to the single-process
server (``create_app`` over an in-process Agent) for comparison.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from concurrent import futures
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'visagent[ray]')")

from ray import serve  # noqa: E402

from tests.test_server import free_port  # noqa: E402
from visagent import ray_serve  # noqa: E402
from visagent.config import load_config  # noqa: E402
from visagent.errors import ModelUnavailableError  # noqa: E402
from visagent.server import load_settings  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "ray-s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
DETECT = {"image": "img_0", "labels": ["cup"], "box_threshold": 0.0, "text_threshold": 0.0}
PLAN = [
    {"tool": "detect", "args": DETECT, "thought": "look for cups"},
    {"tool": "segment", "args": {"image": "img_0", "boxes": ["det_1_0"]}},
    {"tool": "segment", "args": {"image": "img_0", "boxes": ["det_1_1"]}},  # the embedding of img_0 again
    {"final": "Two cups outlined.", "evidence": ["mask_2_0", "mask_3_0", "det_1_0"]},
]
DETECT_PLAN = [{"tool": "detect", "args": DETECT}, {"final": "cups", "evidence": ["det_1_0"]}]
RAY_SECTION = {
    "families": ["detect", "segment"],
    "default": {"num_cpus": 0.1},
    "ingress": {"num_cpus": 0.1},
    "deployments": {"detect": {"num_replicas": 2, "num_cpus": 0.1}},
    "retries": 3,
}
#: the detect deployment waits up to 50 ms to gather calls (so concurrent requests share a batch)
MODELS = {"detect": {"checkpoint": "tiny:grounding-dino", "batch_wait_ms": 50, "max_batch": 8}}


def _config(**ray_extra: Any) -> Any:
    return load_config(profile="tiny", overrides={"models": MODELS, "ray": {**RAY_SECTION, **ray_extra}})


def _wait_running(app_name: str, timeout_s: float = 120) -> None:
    """Until every deployment of ``app_name`` has all its replicas running."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        states = ray_serve._serve_status(app_name)
        if states and all(set(s["replicas"]) == {"RUNNING"} for s in states.values()):
            return
        time.sleep(0.5)
    pytest.fail(f"the Ray Serve app did not get all its replicas running: {ray_serve._serve_status(app_name)}")


@pytest.fixture(scope="module")
def ray_server() -> Any:
    """``(base_url, config)`` of visagent on a local Ray Serve instance (stopped after the module)."""
    cfg = _config()
    port = free_port()
    settings = load_settings(cfg, environ={}, token=TOKEN, port=port, max_concurrency=16, max_queue=64, max_requests_per_client=64)
    ray_serve.prepare_checkpoints(cfg)
    application = ray_serve.build_app(cfg, settings=settings)
    ray.init(
        address="local", num_cpus=2, include_dashboard=False, object_store_memory=150 * 1024 * 1024,
        log_to_driver=False, configure_logging=False,
    )  # fmt: skip
    try:
        ray_serve.deploy(application, cfg, "127.0.0.1", port)
        _wait_running(cfg.ray.app_name)
        yield f"http://127.0.0.1:{port}", cfg
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()


@pytest.fixture(scope="module")
def local_client() -> Any:
    """The single-process server's app (same config, no Ray), through a test client."""
    from fastapi.testclient import TestClient

    from visagent.agent import Agent
    from visagent.server import create_app

    cfg = load_config(profile="tiny", overrides={"models": MODELS})
    app = create_app(Agent(cfg), load_settings(cfg, environ={}, token=TOKEN))
    with TestClient(app) as client:
        yield client


def _ask(base: str, plan: list[dict[str, Any]], timeout: float = 120, **extra: Any) -> httpx.Response:
    body = {"question": "where are the cups?", "media": [{"sample": "coffee"}], "plan": plan, **extra}
    return httpx.post(f"{base}/v1/ask", json=body, headers=AUTH, timeout=timeout)


def _rounded(value: Any) -> Any:
    """Floats to 5 significant digits (replicas run torch with other thread counts: the last bits of
    a float32 sum may differ), recursively."""
    if isinstance(value, float):
        return float(f"{value:.5g}")
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


def _comparable(answer: dict[str, Any]) -> dict[str, Any]:
    """An answer without what differs between two runs of the same plan (timing), floats rounded."""
    steps = []
    for step in answer["trace"]["steps"]:
        steps.append({k: v for k, v in step.items() if k not in ("ms", "ts", "started", "finished", "tokens")})
    return _rounded({
        "answer": answer["answer"],
        "status": answer["status"],
        "evidence": answer["evidence"],
        "warnings": answer.get("warnings"),
        "steps": steps,
    })


def test_same_answers_as_the_single_process_server(ray_server: Any, local_client: Any) -> None:
    base, _ = ray_server
    assert httpx.post(f"{base}/v1/ask", json={"question": "x", "media": [{"sample": "coffee"}]}, timeout=30).status_code == 401
    remote = _ask(base, PLAN)
    assert remote.status_code == 200, remote.text
    local = local_client.post("/v1/ask", json={"question": "where are the cups?", "media": [{"sample": "coffee"}], "plan": PLAN}, headers=AUTH)
    assert local.status_code == 200, local.text
    got, want = _comparable(remote.json()), _comparable(local.json())
    assert [s["tool"] for s in got["steps"] if s["type"] == "tool"] == ["detect", "segment", "segment"]
    assert got["status"] == "answered" and all(s["type"] != "error" for s in got["steps"]), got["steps"]
    assert got == want
    assert httpx.get(f"{base}/v1/tools", headers=AUTH, timeout=30).json() == local_client.get("/v1/tools", headers=AUTH).json()

    # the stream carries the same steps and answer
    body = {"question": "where are the cups?", "media": [{"sample": "coffee"}], "plan": PLAN}
    with httpx.stream("POST", f"{base}/v1/ask/stream", json=body, headers=AUTH, timeout=120) as r:
        events = [line.split(": ", 1)[1] for line in r.iter_lines() if line.startswith("event: ")]
    assert events[0] == "meta" and events[-1] == "answer" and events.count("step") == len(remote.json()["trace"]["steps"])

    models = httpx.get(f"{base}/v1/models", headers=AUTH, timeout=30).json()
    deployments = models["pool"]["deployments"]
    assert set(deployments) == {"detect", "segment"}
    # each segment call carried the image's embedding: embed ran once per run, decode per box
    assert deployments["segment"]["calls"] >= 3 * 2
    health = httpx.get(f"{base}/healthz", timeout=30).json()
    assert health["status"] == "ok" and set(health["deployments"]) == {"detect", "segment"}


def _burst(base: str, n: int, plan: list[dict[str, Any]], during: Any = None) -> list[httpx.Response]:
    with futures.ThreadPoolExecutor(n) as pool:
        jobs = [pool.submit(_ask, base, plan, 180) for _ in range(n)]
        if during is not None:
            during(jobs)
        return [j.result() for j in jobs]


def test_concurrent_requests_share_batches(ray_server: Any) -> None:
    base, cfg = ray_server
    replies = _burst(base, 16, DETECT_PLAN)
    assert [r.status_code for r in replies] == [200] * 16
    assert all(r.json()["status"] == "answered" for r in replies)
    detect = httpx.get(f"{base}/v1/models", headers=AUTH, timeout=30).json()["pool"]["deployments"]["detect"]
    assert detect["max_batch_seen"] > 1, detect  # calls ran in batches the deployment gathered
    # the replicas' own counts agree: some replica ran a batch of more than one call
    handle = serve.get_deployment_handle("detect", app_name=cfg.ray.app_name)
    seen = {}
    for _ in range(12):
        stats = handle.stats.remote().result(timeout_s=30)
        seen[stats["replica"]] = stats
    assert max(s["max_batch_seen"] for s in seen.values()) > 1, seen
    assert sum(s["items"] for s in seen.values()) >= 16


def test_a_replica_killed_under_load_loses_no_request(ray_server: Any) -> None:
    base, cfg = ray_server
    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if f"{cfg.ray.app_name}#detect#" in a["name"]]
    assert len(names) == 2, names
    plan = [{"tool": "detect", "args": DETECT}, {"tool": "detect", "args": {**DETECT, "labels": ["mug"]}}, {"final": "cups", "evidence": ["det_1_0"]}]

    def kill_one(jobs: list[Any]) -> None:
        next(futures.as_completed(jobs))  # the burst is under way: the first answer is back, the rest in flight
        ray.kill(ray.get_actor(names[0], namespace="serve"), no_restart=True)

    replies = _burst(base, 24, plan, during=kill_one)
    assert [r.status_code for r in replies] == [200] * 24, [r.text[:300] for r in replies if r.status_code != 200]  # every request answered
    for r in replies:
        answer = r.json()
        errors = [s for s in answer["trace"]["steps"] if s["type"] == "error"]
        # a lost call would be an error step naming the deployment; retries sent them to the live replica
        assert answer["status"] == "answered" and not errors, errors
    detect = httpx.get(f"{base}/v1/models", headers=AUTH, timeout=30).json()["pool"]["deployments"]["detect"]
    assert detect["failed"] == 0, detect
    assert detect["retries"] >= 1, detect  # calls in flight on the killed replica were sent again
    # the ingress keeps serving
    after = _ask(base, DETECT_PLAN)
    assert after.status_code == 200 and after.json()["status"] == "answered"
    assert httpx.get(f"{base}/healthz", timeout=30).json()["status"] == "ok"


def test_a_deployment_that_cannot_start_names_the_model(ray_server: Any, tmp_path: Path) -> None:
    base, _ = ray_server
    missing = tmp_path / "no-such-checkpoint"
    cfg = load_config(
        profile="tiny",
        overrides={
            "models": {"caption": {"checkpoint": str(missing)}},
            "ray": {"families": ["caption"], "default": {"num_cpus": 0.1}, "ingress": {"num_cpus": 0.1}, "app_name": "broken", "start_timeout_s": 90},
        },
    )
    with pytest.raises(ModelUnavailableError) as info:
        ray_serve.deploy(ray_serve.build_app(cfg), cfg, "127.0.0.1", int(base.rsplit(":", 1)[1]), route_prefix="/broken")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("cannot start the 'caption' deployment: checkpoint ") and str(missing) in message, message
    serve.delete("broken")
    assert httpx.get(f"{base}/healthz", timeout=30).json()["status"] == "ok"  # the running app is untouched


@pytest.mark.parametrize(
    "section, expected",
    [
        ({"deployments": {"detect": {"num_replica": 2}}}, "unknown configuration key"),
        ({"families": ["detect", "nope"]}, "ray.families: no model configured for 'nope'"),
        ({"default": {"num_replicas": 2, "autoscaling": {"max_replicas": 3}}}, "ray.default: set num_replicas or autoscaling, not both"),
    ],
)
def test_a_bad_ray_config_is_one_line(tmp_path: Path, section: dict[str, Any], expected: str) -> None:
    config = tmp_path / "visagent.yaml"
    config.write_text(yaml.safe_dump({"ray": section}))
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    cmd = [sys.executable, "-m", "visagent.cli", "serve", "--ray", "--profile", "tiny", "--config", str(config), "--port", str(free_port())]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and expected in lines[0], done.stderr
    assert "Traceback" not in done.stderr and not done.stdout.strip()
    if expected == "unknown configuration key":
        assert "did you mean 'ray.deployments.detect.num_replicas'?" in lines[0]
