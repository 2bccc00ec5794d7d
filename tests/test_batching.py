"""Batching across runs: the batcher (gathering, a lone call not waiting, one bad item failing
only its caller, max_batch, abandoned calls), every backend's batched entry point against its
unbatched method on tiny random checkpoints (images of different sizes), concurrent ``aask``
runs sharing forwards, and the stats in ``pool.stats()`` / ``visagent models``."""

from __future__ import annotations

import asyncio
import sys
import threading
import time

import numpy as np
import pytest
from PIL import Image

from visagent.batching import Batcher, BatchGroup, CallAbandoned


# -- the batcher -------------------------------------------------------------------------------
class Gate:
    """A run function whose first forward blocks until ``release()`` (so others queue behind it)."""

    def __init__(self, fail_on: object = None) -> None:
        self.open = threading.Event()
        self.calls: list[list] = []
        self.fail_on = fail_on

    def __call__(self, items: list) -> list:
        self.calls.append(list(items))
        if len(self.calls) == 1:
            assert self.open.wait(30), "test gate never released"
        if self.fail_on is not None and self.fail_on in items:
            raise ValueError(f"bad item {self.fail_on}")
        return [x * 10 for x in items]

    def release(self) -> None:
        self.open.set()


def _queued(b: Batcher, n: int) -> None:
    deadline = time.monotonic() + 30
    while b.stats()["queued"] < n:
        assert time.monotonic() < deadline, f"only {b.stats()['queued']} of {n} items queued"
        time.sleep(0.002)


def _submit_all(b: Batcher, items: list, alive=None) -> tuple[list[threading.Thread], dict]:
    out: dict = {}

    def one(x):
        try:
            out[x] = b.submit(x, alive=alive(x) if alive else None)
        except Exception as exc:  # noqa: BLE001 - recorded for the assertions
            out[x] = exc

    threads = [threading.Thread(target=one, args=(x,)) for x in items]
    for t in threads:
        t.start()
    return threads, out


def test_a_lone_call_runs_at_once_without_waiting():
    b = Batcher(lambda items: [x + 1 for x in items], max_batch=8, batch_wait_ms=60_000)
    assert b.submit(1) == 2 and b.submit(5) == 6
    assert [(r.size, r.waited) for r in b.records] == [(1, False), (1, False)]
    st = b.stats()
    assert st["batches"] == 2 and st["items"] == 2 and st["sizes"] == {"1": 2} and st["waited"] == 0


def test_calls_arriving_during_a_forward_share_the_next_one_up_to_max_batch():
    gate = Gate()
    b = Batcher(gate, max_batch=3, batch_wait_ms=0)
    first, out = _submit_all(b, [0])
    deadline = time.monotonic() + 30
    while not gate.calls:
        assert time.monotonic() < deadline
        time.sleep(0.002)
    rest, out2 = _submit_all(b, [1, 2, 3, 4, 5])
    _queued(b, 5)
    gate.release()
    for t in first + rest:
        t.join(30)
    assert out | out2 == {x: x * 10 for x in range(6)}
    assert [len(c) for c in gate.calls] == [1, 3, 2]  # max_batch 3 respected
    assert sorted(x for c in gate.calls[1:] for x in c) == [1, 2, 3, 4, 5]
    st = b.stats()
    assert st["max_size"] == 3 and st["mean_size"] == 2.0 and st["sizes"] == {"1": 1, "2": 1, "3": 1}


def test_a_failing_item_fails_only_its_caller():
    gate = Gate(fail_on=2)
    b = Batcher(gate, max_batch=8, batch_wait_ms=0)
    first, out = _submit_all(b, [0])
    while not gate.calls:
        time.sleep(0.002)
    rest, out2 = _submit_all(b, [1, 2, 3])
    _queued(b, 3)
    gate.release()
    for t in first + rest:
        t.join(30)
    got = out | out2
    assert got[0] == 0 and got[1] == 10 and got[3] == 30
    assert isinstance(got[2], ValueError) and "bad item 2" in str(got[2])
    assert b.stats()["fallbacks"] == 1  # the batch of 3 failed, then ran one by one
    assert b.submit(7) == 70  # and the batcher still works


def test_abandoned_calls_are_dropped_and_do_not_wedge_the_batcher():
    gate = Gate()
    b = Batcher(gate, max_batch=8, batch_wait_ms=0)
    first, out = _submit_all(b, [0])
    while not gate.calls:
        time.sleep(0.002)
    rest, out2 = _submit_all(b, [1, 2, 3], alive=lambda x: (lambda: x != 2))
    _queued(b, 3)
    gate.release()
    for t in first + rest:
        t.join(30)
    got = out | out2
    assert isinstance(got[2], CallAbandoned) and got[1] == 10 and got[3] == 30
    assert sorted(gate.calls[1]) == [1, 3]
    assert b.submit(4) == 40


def test_a_leader_waits_only_for_announced_calls():
    group = BatchGroup()
    b = Batcher(lambda items: list(items), max_batch=8, batch_wait_ms=30_000, group=group)
    announced = threading.Event()
    result: dict = {}

    def other():
        with group.expect():
            announced.set()
            # submit once the leader is waiting for this announced call
            deadline = time.monotonic() + 30
            while b.stats()["queued"] < 1 and time.monotonic() < deadline:
                time.sleep(0.002)
            result["other"] = b.submit("b")

    t = threading.Thread(target=other)
    t.start()
    assert announced.wait(30)
    with group.expect():
        assert b.submit("a") == "a"
    t.join(30)
    assert result["other"] == "b"
    assert [(r.size, r.waited) for r in b.records] == [(2, True)]


def test_max_batch_one_disables_batching():
    gate = Gate()
    b = Batcher(gate, max_batch=1, batch_wait_ms=5)
    first, _ = _submit_all(b, [0])
    while not gate.calls:
        time.sleep(0.002)
    rest, out = _submit_all(b, [1, 2, 3])
    _queued(b, 3)
    gate.release()
    for t in first + rest:
        t.join(30)
    assert out == {1: 10, 2: 20, 3: 30} and [len(c) for c in gate.calls] == [1, 1, 1, 1]


def test_a_model_is_not_evicted_while_a_batch_runs_on_it():
    from visagent.pool import ModelKey, ModelPool

    pool = ModelPool()
    key = ModelKey("detect", "tiny:x", "cpu", "float32")
    gate = Gate()

    def run(items):
        with pool.use(key, lambda: {"model": "loaded"}):
            return gate(items)

    b = pool.batcher(key, "detect_many", run, max_batch=8, batch_wait_ms=0)
    threads, out = _submit_all(b, [1])
    while not gate.calls:
        time.sleep(0.002)
    assert pool.evict(key) is False and pool.free_idle() == 0  # in use by the running batch
    gate.release()
    for t in threads:
        t.join(30)
    assert out == {1: 10} and pool.batch_stats(key)["items"] == 1
    assert pool.evict(key) is True  # idle again


# -- the backends' batched entry points ---------------------------------------------------------
SIZES = [(40, 70), (48, 48), (40, 70)]  # (h, w): different sizes, one repeated


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(3)
    return [Image.fromarray((rng.random((h, w, 3)) * 255).astype("uint8")) for h, w in SIZES]


def _bundle(tiny_config, family, **model):
    from visagent.config import load_config
    from visagent.context import Models
    from visagent.pool import ModelPool

    cfg = load_config(
        profile="tiny",
        overrides={"cache_dir": tiny_config.cache_dir, "models": {family: {"checkpoint": tiny_config.model(family).checkpoint} | model}},
        environ={},
    )
    return Models(cfg, ModelPool()).use(family)


@pytest.mark.parametrize(
    "model", [{"backend": "transformers"}, {"backend": "official"}, {"checkpoint": "tiny:owlv2"}], ids=["gdino", "gdino-official", "owlv2"]
)
def test_detect_many_equals_detect(tiny_config, images, model):
    from visagent.tools.detect import DetectRequest

    labels = [["red box", "cat"], ["dog"], ["a cup", "b", "c"]]
    requests = [DetectRequest(im, lb, 0.0, 0.0) for im, lb in zip(images, labels)]
    with _bundle(tiny_config, "detect", **model) as det:
        one = [det.detect(r.image, r.labels, r.box_threshold, r.text_threshold) for r in requests]
        before = det.forwards
        many = det.detect_many(requests)
        forwards = det.forwards - before
    assert forwards < len(requests)  # gathered: fewer forwards than requests
    for a, b, r in zip(one, many, requests):
        assert a and len(a) == len(b)
        assert [d.label for d in a] == [d.label for d in b] and {d.label for d in a} <= set(r.labels)
        np.testing.assert_allclose([d.score for d in a], [d.score for d in b], atol=1e-4)
        np.testing.assert_allclose([d.box for d in a], [d.box for d in b], atol=1e-2)
        w, h = r.image.size  # each request post-processed with its own image size
        assert all(0 <= d.box[0] <= d.box[2] <= w and 0 <= d.box[1] <= d.box[3] <= h for d in b)


@pytest.mark.parametrize("family", ["caption", "vqa"])
def test_generate_many_equals_generate(tiny_config, images, family):
    from visagent.tools.caption import GenerateRequest, vqa_prompt

    with _bundle(tiny_config, family, options={"max_new_tokens": 6}) as cap:
        if family == "vqa":  # questions of two token lengths: two groups
            prompts = [vqa_prompt(cap.kind, q) for q in ["what colour?", "how many cats are on it?", "what colour?"]]
        else:
            prompts = [None, "a photo of", None]
        requests = [GenerateRequest(im, p) for im, p in zip(images, prompts)]
        one = [cap.generate(r.image, r.prompt) for r in requests]
        many = cap.generate_many(requests)
    assert many == one and all(isinstance(t, str) for t in many)


def test_clip_features_many_equal_unbatched(tiny_config, images):
    with _bundle(tiny_config, "search") as enc:
        texts = [["a cat"], ["a long description of a red dog on a table", "x"], ["b"]]
        for a, b in zip([enc.embed_texts(t) for t in texts], enc.text_features_many(texts)):
            assert a.shape == b.shape
            np.testing.assert_allclose(a, b, atol=1e-5)
        groups = [[images[0]], [images[1], images[2]], [images[2]]]
        calls = enc.calls["images"]
        many = enc.image_features_many(groups)
        assert enc.calls["images"] == calls + 1  # one forward for the three requests
        for a, b in zip([enc.embed_images(g) for g in groups], many):
            np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("model", [{"backend": "transformers"}, {"backend": "official"}], ids=["sam", "sam-official"])
def test_sam_embed_many_and_decode_many_equal_unbatched(tiny_config, images, model):
    import torch

    from visagent.tools.segment import DecodeRequest, Prompts

    prompts = [  # boxes, one point (multimask), boxes + points
        Prompts([[10, 10, 60, 35], [0, 0, 30, 30]], None, None),
        Prompts(None, [[20, 30]], [1]),
        Prompts([[5, 5, 60, 30]], [[20, 20], [30, 30]], [1, 0]),
    ]
    with _bundle(tiny_config, "segment", **model) as sam:
        calls = []
        hook = sam.image_encoder.register_forward_hook(lambda mod, inp, out: calls.append(inp[0].shape[0]))
        try:
            one = [sam.embed(im) for im in images]
            many = sam.embed_many(images)
        finally:
            hook.remove()
        assert calls == [1, 1, 1, 3]  # the batch: one encoder forward of 3 images
        key = "features" if "features" in one[0] else "embeddings"
        for a, b, im in zip(one, many, images):
            assert a["original_size"] == b["original_size"] == (im.height, im.width)
            assert a["input_size"] == b["input_size"]
            torch.testing.assert_close(a[key], b[key], atol=1e-4, rtol=1e-4)
        requests = [DecodeRequest(st, p) for st, p in zip(one, prompts)]
        single = [sam.decode(r.state, r.prompts) for r in requests]
        batched = sam.decode_many(requests)
    for (m1, s1), (m2, s2), p, im in zip(single, batched, prompts, images):
        assert m2.shape == (p.batch, im.height, im.width) and m2.dtype == torch.bool
        assert float((m1 != m2).float().mean()) < 1e-3
        torch.testing.assert_close(s1, s2, atol=1e-4, rtol=1e-4)


# -- through the agent: concurrent runs share forwards -------------------------------------------
def _slow_first_forward(pool, key, queued_at_least: int):
    """Make the detector's first batched forward wait until ``queued_at_least`` calls queue
    behind it (deterministic gathering, whatever the machine's speed)."""
    bundle = pool.peek(key, lambda: None)
    original = bundle.detect_many
    state = {"first": True}

    def wrapped(requests):
        if state["first"]:
            state["first"] = False
            deadline = time.monotonic() + 30
            while pool.batch_stats(key)["ops"]["detect_many"]["queued"] < queued_at_least and time.monotonic() < deadline:
                time.sleep(0.002)
        return original(requests)

    bundle.detect_many = wrapped


def test_concurrent_aask_runs_are_batched_and_reported(tiny_config, images, capsys):
    from visagent.agent import Agent
    from visagent.aio import aask
    from visagent.planners import ScriptedPlanner
    from visagent.pool import ModelPool

    pool = ModelPool()
    plan = [
        {"tool": "detect", "args": {"image": "img_0", "labels": ["cat"]}},
        {"tool": "count", "args": {"image": "img_0", "label": "dog"}},
        {"final": "done"},
    ]
    agent = Agent(tiny_config, planner=ScriptedPlanner(plan), pool=pool)
    warm = agent.ask("warm up", [images[1]])  # loads the detector and makes its batcher
    assert warm.ok, warm.error
    from visagent.context import Models

    key = Models(tiny_config, pool).key("detect")[0]
    pool.reset_batch_stats()
    _slow_first_forward(pool, key, queued_at_least=3)

    async def main():
        return await asyncio.gather(*[aask(agent, f"q{i}", [images[i % len(images)]]) for i in range(4)])

    answers = asyncio.run(main())
    assert all(a.ok for a in answers), [a.error for a in answers]
    # every run got its own ids and outputs
    for a in answers:
        steps = [s for s in a.trace.steps if getattr(s, "tool", None) in ("detect", "count")]
        assert [s.tool for s in steps] == ["detect", "count"]
    stats = pool.stats()
    det = next(m for m in stats["models"] if m["family"] == "detect")
    b = det["batching"]
    assert b["items"] == 8 and b["max_size"] > 1 and b["batches"] < 8
    assert sum(int(n) * c for n, c in b["sizes"].items()) == 8
    assert set(b["ops"]) == {"detect_many"}
    assert stats["batching"]["items"] >= 8


def test_models_command_shows_batching(tiny_config):
    import json

    from typer.testing import CliRunner

    from visagent.cli import app

    result = CliRunner().invoke(app, ["models", "--profile", "tiny", "--json"])
    assert result.exit_code == 0, result.output
    rows = {r["family"]: r for r in json.loads(result.output)["models"]}
    assert rows["detect"]["batching"] == {"max_batch": 8, "batch_wait_ms": 2.0}
    assert rows["planner"]["batching"] is None


def test_server_reports_batches_and_models_command_shows_them(tmp_path, capsys, monkeypatch):
    """A real ``visagent serve`` (tiny profile, one detect call per request): ``GET /v1/models``
    counts every call in the pool's batch statistics, and ``visagent models --server`` shows them."""
    import json

    import httpx

    from tests.test_server import free_port, png, start, stop
    from visagent.cli import main

    (tmp_path / "plan.yaml").write_text("- tool: detect\n  args: {image: img_0, labels: [cat]}\n- final: done\n")
    (tmp_path / "config.yaml").write_text(json.dumps({"server": {"max_concurrency": 4, "max_queue": 16}}))
    port = free_port()
    cmd = [sys.executable, "-m", "visagent.cli", "serve", "--profile", "tiny", "--config", str(tmp_path / "config.yaml"),
           "--planner", f"script:{tmp_path / 'plan.yaml'}", "--port", str(port)]  # fmt: skip
    proc = start(cmd, port, tmp_path / "server.log")
    base = f"http://127.0.0.1:{port}"
    try:

        async def asks():
            async with httpx.AsyncClient(base_url=base, timeout=300) as client:
                return await asyncio.gather(
                    *[client.post("/v1/ask", files={"files": (f"{i}.png", png(40, 30, i))}, data={"question": f"q{i}"}) for i in range(4)]
                )

        responses = asyncio.run(asks())
        assert [r.status_code for r in responses] == [200] * 4
        pool = httpx.get(f"{base}/v1/models", timeout=30).json()["pool"]
        det = next(m for m in pool["models"] if m["family"] == "detect")
        assert det["batching"]["items"] == 4 and det["batching"]["ops"]["detect_many"]["max_batch"] == 8
        assert pool["batching"]["items"] == 4
        monkeypatch.setenv("COLUMNS", "200")
        assert main(["models", "--profile", "tiny", "--server", base, "--json"]) == 0
        shown = json.loads(capsys.readouterr().out)
        assert shown["pool"]["batching"]["items"] == 4
        assert {r["family"]: r["resident"] for r in shown["models"]}["detect"] is True
        assert main(["models", "--profile", "tiny", "--server", base]) == 0
        text = capsys.readouterr().out
        assert "resident on" in text and "batches" in text and "items" in text
    finally:
        stop(proc)
