"""``search`` and ``classify`` on tiny CLIP / SigLIP / FLAVA checkpoints loaded through the real
loader: ranking, scores against a direct transformers computation, the gallery index (reuse,
incremental updates, counted embedding calls), batching and progress, errors, agent and CLI runs."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests.helpers import ask_cli
from visagent.config import load_config
from visagent.context import CallContext
from visagent.errors import ToolError
from visagent.media import MediaStore, sample_image
from visagent.pool import ModelPool
from visagent.session import Session
from visagent.tools.base import OBSERVATION_LIMIT
from visagent.tools.search import Classify, ClassifyInput, DualEncoder, Search, SearchInput, is_image_file, scan_gallery
from visagent.types import ErrorStep

SAMPLES = ("astronaut", "chelsea", "coffee", "rocket", "horse")
ARCHS = {"clip": ("clip", "CLIPModel"), "siglip": ("siglip", "SiglipModel"), "flava": ("flava", "FlavaModel")}


def _config(checkpoint: str = "tiny:clip", **options: Any) -> Any:
    overrides = {"models": {"search": {"checkpoint": checkpoint, "options": options}}}
    return load_config(profile="tiny", overrides=overrides, environ={"VISAGENT_CACHE_DIR": os.environ["VISAGENT_CACHE_DIR"]})


def _ctx(config: Any, pool: Any, *media: Any, progress: Any = None) -> CallContext:
    store = MediaStore()
    for m in media:
        store.add(m)
    ctx = Session(config, pool, store).open_call(progress)
    return ctx


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Sizes of every ``DualEncoder.embed_images`` call made during the test."""
    seen: list[int] = []
    original = DualEncoder.embed_images

    def counting(self: DualEncoder, images: list[Image.Image]) -> np.ndarray:
        seen.append(len(images))
        return original(self, images)

    monkeypatch.setattr(DualEncoder, "embed_images", counting)
    return seen


@pytest.fixture
def gallery(tmp_path: Path) -> Path:
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    for i, name in enumerate(SAMPLES[:4]):
        target = folder / ("sub" if i == 3 else "") / f"{name}.png"
        sample_image(name).resize((96, 64)).save(target)
    (folder / "notes.txt").write_text("not an image")
    (folder / ".hidden.png").write_bytes((folder / "astronaut.png").read_bytes())
    sample_image("coins").resize((64, 64)).save(folder / "coins-no-extension", format="JPEG")
    return folder


# -- architectures ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(ARCHS))
def test_loader_picks_architecture_from_config(name: str, shared_pool: Any) -> None:
    ctx = _ctx(_config(f"tiny:{name}"), shared_pool, *(f"sample:{s}" for s in SAMPLES[:3]))
    with ctx.model("search") as bundle:
        assert bundle.model_type == ARCHS[name][0] and type(bundle.model).__name__ == ARCHS[name][1]
    out = Search().run(SearchInput(query="a cat"), ctx)
    assert sorted(h.image for h in out.results) == ["img_0", "img_1", "img_2"]
    scores = [h.score for h in out.results]
    assert scores == sorted(scores, reverse=True) and all(-1.0 <= s <= 1.0 for s in scores)
    assert ctx.models == [f"tiny:{name}"]


def test_scores_match_a_direct_transformers_computation(shared_pool: Any) -> None:
    import torch
    from transformers import AutoModel, AutoProcessor

    from visagent.checkpoints import ensure_tiny

    ctx = _ctx(_config(), shared_pool, *(f"sample:{s}" for s in SAMPLES))
    out = Search().run(SearchInput(query="a photo of a horse"), ctx)
    folder = ensure_tiny("clip", "transformers", Path(os.environ["VISAGENT_CACHE_DIR"]))
    model, proc = AutoModel.from_pretrained(folder).eval(), AutoProcessor.from_pretrained(folder)
    with torch.no_grad():
        img = model.get_image_features(**proc(images=[ctx.image(f"img_{i}") for i in range(5)], return_tensors="pt")).pooler_output
        txt = model.get_text_features(**proc(text=["a photo of a horse"], return_tensors="pt")).pooler_output
    cos = torch.nn.functional.normalize(img, dim=-1) @ torch.nn.functional.normalize(txt, dim=-1)[0]
    expected = sorted(((float(c), f"img_{i}") for i, c in enumerate(cos)), reverse=True)
    assert [h.image for h in out.results] == [i for _, i in expected]
    np.testing.assert_allclose([h.score for h in out.results], [c for c, _ in expected], atol=1e-5)


def test_ranking_every_candidate_once_top_k_and_cache(shared_pool: Any, calls: list[int]) -> None:
    ctx = _ctx(_config(), shared_pool, *(f"sample:{s}" for s in SAMPLES))
    out = Search().run(SearchInput(query="a rocket"), ctx)
    assert sorted(h.image for h in out.results) == [f"img_{i}" for i in range(5)] and out.candidates == 5
    assert ctx.cache["search_image_embedding"] == "miss" and calls == [5]
    ctx = ctx.session.open_call()
    top = Search().run(SearchInput(query="a rocket", images=["img_3", "img_1", "img_3"], top_k=1), ctx)
    assert len(top.results) == 1 and top.candidates == 2 and top.results[0].image in {"img_1", "img_3"}
    assert ctx.cache["search_image_embedding"] == "hit" and calls == [5]  # embeddings reused in the run
    assert len(out.observation()) <= OBSERVATION_LIMIT and "1. img_" in out.observation()


def test_search_errors(shared_pool: Any, tmp_path: Path) -> None:
    ctx = _ctx(_config(), shared_pool, "sample:coffee")
    with pytest.raises(ToolError, match="unknown media id 'img_9'"):
        Search().run(SearchInput(query="x", images=["img_9"]), ctx)
    with pytest.raises(ToolError, match="gallery folder not found"):
        Search().run(SearchInput(query="x", gallery=str(tmp_path / "nope")), ctx)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ToolError, match="holds no readable images"):
        Search().run(SearchInput(query="x", gallery=str(tmp_path / "empty")), ctx)
    with pytest.raises(ToolError, match="either images or gallery"):
        Search().run(SearchInput(query="x", images=["img_0"], gallery=str(tmp_path)), ctx)
    with pytest.raises(ValueError, match="query must not be empty"):
        SearchInput(query="   ")
    with pytest.raises(ValueError, match="extra"):
        SearchInput(query="x", folder="y")


def test_non_dual_encoder_checkpoint_is_refused(shared_pool: Any) -> None:
    ctx = _ctx(_config("tiny:video-llava"), ModelPool(), "sample:coffee")
    with pytest.raises(ToolError, match="model_type 'video_llava'; supported: clip, siglip, flava"):
        Search().run(SearchInput(query="x"), ctx)


# -- gallery index ---------------------------------------------------------------------------
def test_gallery_scan_by_content(gallery: Path) -> None:
    names = [p.relative_to(gallery).as_posix() for p in scan_gallery(gallery)]
    assert names == ["astronaut.png", "chelsea.png", "coffee.png", "coins-no-extension", "sub/rocket.png"]
    assert not is_image_file(gallery / "notes.txt")


def test_gallery_index_reused_and_updated(gallery: Path, shared_pool: Any, calls: list[int]) -> None:
    config = _config()
    ctx = _ctx(config, shared_pool, "sample:chelsea")
    first = Search().run(SearchInput(query="a cat", gallery=str(gallery), top_k=100), ctx)
    assert ctx.cache["gallery_index"] == "miss" and first.embedded == 5 and first.reused == 0
    assert sum(calls) == 5 and first.candidates == 5
    paths = [h.path for h in first.results]
    assert sorted(paths) == sorted(str(p) for p in scan_gallery(gallery))  # every file once
    scores = [h.score for h in first.results]
    assert scores == sorted(scores, reverse=True)
    # the top hits are registered as images for later tools; the rest are not
    assert [h.image is not None for h in first.results] == [True] * 3 + [False] * 2
    assert ctx.image(first.results[0].image).size in {(96, 64), (64, 64)}
    # a gallery file scores like the same pixels given as a run image
    cat = next(h for h in first.results if h.path.endswith("chelsea.png"))
    ctx = ctx.session.open_call()
    same = ctx.add_image(Image.open(gallery / "chelsea.png").convert("RGB"), "same pixels")
    direct = Search().run(SearchInput(query="a cat", images=[same]), ctx)
    assert direct.results[0].score == pytest.approx(cat.score, abs=1e-5)

    # second run, new context and process state: the index is reused, nothing is embedded
    calls.clear()
    ctx2 = _ctx(config, shared_pool)
    second = Search().run(SearchInput(query="a cat", gallery=str(gallery), top_k=100), ctx2)
    assert calls == [] and ctx2.cache["gallery_index"] == "hit" and second.embedded == 0 and second.reused == 5
    assert [(h.path, h.score) for h in second.results] == [(h.path, h.score) for h in first.results]

    # change one file, add one, remove one: only the new content is embedded
    sample_image("horse").resize((96, 64)).save(gallery / "coffee.png")
    sample_image("coffee").resize((80, 80)).save(gallery / "sub" / "cup.png")
    (gallery / "sub" / "rocket.png").unlink()
    ctx3 = _ctx(config, shared_pool)
    third = Search().run(SearchInput(query="a cat", gallery=str(gallery), top_k=100), ctx3)
    assert sum(calls) == 2 and third.embedded == 2 and third.reused == 3 and third.removed == 1
    assert ctx3.cache["gallery_index"] == "updated" and third.candidates == 5
    assert not any(h.path.endswith("rocket.png") for h in third.results)
    # a renamed (moved) file keeps its embedding: keyed by content hash
    calls.clear()
    (gallery / "chelsea.png").rename(gallery / "cat.png")
    fourth = Search().run(SearchInput(query="a cat", gallery=str(gallery), top_k=100), _ctx(config, shared_pool))
    assert calls == [] and fourth.embedded == 0 and fourth.removed == 1
    moved = next(h for h in fourth.results if h.path.endswith("cat.png"))
    assert moved.score == pytest.approx(cat.score, abs=1e-6)


def test_gallery_index_is_per_model(gallery: Path, shared_pool: Any, calls: list[int]) -> None:
    Search().run(SearchInput(query="a cat", gallery=str(gallery)), _ctx(_config(), shared_pool))
    calls.clear()
    ctx = _ctx(_config("tiny:siglip"), shared_pool)
    out = Search().run(SearchInput(query="a cat", gallery=str(gallery)), ctx)
    assert ctx.cache["gallery_index"] == "miss" and out.embedded == 5 and sum(calls) == 5


def test_gallery_batching_progress_and_bad_files(gallery: Path, calls: list[int]) -> None:
    (gallery / "broken.png").write_bytes((gallery / "astronaut.png").read_bytes()[:60])  # PNG magic, truncated
    events: list[tuple[str, int, int]] = []
    ctx = _ctx(_config(batch_size=2), ModelPool(), progress=lambda m, d, t: events.append((m, d, t)))
    out = Search().run(SearchInput(query="a cat", gallery=str(gallery), register_top=0), ctx)
    # 6 files in path order, batches of 2: (astronaut, broken) (chelsea, coffee) (coins, sub/rocket);
    # the broken file is skipped, so its batch embeds one image
    assert calls == [1, 2, 2]
    assert out.skipped == ["broken.png"] and out.candidates == 5 and all(h.image is None for h in out.results)
    assert [e[1:] for e in events] == [(2, 6), (4, 6), (6, 6)] and {e[0] for e in events} == {"embedding gallery"}


# -- classify --------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(ARCHS))
def test_classify_probabilities(name: str, shared_pool: Any) -> None:
    ctx = _ctx(_config(f"tiny:{name}"), shared_pool, "sample:chelsea")
    labels = ["cat", "dog", "rocket", "cup of coffee"]
    out = Classify().run(ClassifyInput(image="img_0", labels=labels), ctx)
    assert sorted(p.label for p in out.labels) == sorted(labels)
    probs = [p.prob for p in out.labels]
    assert probs == sorted(probs, reverse=True) and sum(probs) == pytest.approx(1.0, abs=1e-6)
    assert all(0.0 <= p <= 1.0 for p in probs)
    # the same probabilities from the encoder by hand (single template)
    one = Classify().run(ClassifyInput(image="img_0", labels=labels, templates=["a photo of a {label}."]), ctx)
    with ctx.model("search") as bundle:
        img = bundle.embed_images([ctx.image("img_0")])[0]
        txt = bundle.embed_texts([f"a photo of a {label}." for label in labels])
        logits = bundle.logit_scale * (txt @ img) + bundle.logit_bias
    expected = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    got = {p.label: p.prob for p in one.labels}
    np.testing.assert_allclose([got[label] for label in labels], expected, atol=1e-5)
    assert len(out.observation()) <= OBSERVATION_LIMIT


def test_classify_bad_arguments(shared_pool: Any) -> None:
    with pytest.raises(ValueError, match="at least 2"):
        ClassifyInput(image="img_0", labels=["cat"])
    with pytest.raises(ValueError, match="duplicate labels: cat"):
        ClassifyInput(image="img_0", labels=["cat", "dog", " cat"])
    with pytest.raises(ValueError, match="no \\{label\\} placeholder"):
        ClassifyInput(image="img_0", labels=["cat", "dog"], templates=["a photo"])
    ctx = _ctx(_config(), shared_pool, "sample:coffee")
    with pytest.raises(ToolError, match="unknown media id"):
        Classify().run(ClassifyInput(image="img_3", labels=["cat", "dog"]), ctx)


# -- agent and CLI ---------------------------------------------------------------------------
def test_agent_run_search_then_classify(make_agent: Any) -> None:
    plan = [
        {"tool": "search", "args": {"query": "a cat"}},
        {"tool": "classify", "args": {"image": "img_1", "labels": ["cat", "person"]}},
        {"final": "img_1", "evidence": ["obs_1", "obs_2"]},
    ]
    ans = make_agent(plan).ask("which image shows a cat?", ["sample:astronaut", "sample:chelsea"])
    assert ans.status == "answered", ans.error
    search, classify = ans.trace.tool_steps()
    assert sorted(r["image"] for r in search.output["results"]) == ["img_0", "img_1"]
    assert [p["label"] for p in classify.output["labels"]] in (["cat", "person"], ["person", "cat"])
    assert not [s for s in ans.trace.steps if isinstance(s, ErrorStep)]


def test_cli_scripted_gallery_search(gallery: Path, tmp_path: Path) -> None:
    plan = [{"tool": "search", "args": {"query": "a rocket", "gallery": str(gallery), "top_k": 10}},
            {"tool": "classify", "args": {"image": "img_1", "labels": ["rocket", "cat"]}},
            {"final": "found it", "evidence": ["obs_1"]}]  # fmt: skip
    proc = ask_cli(tmp_path, ["sample:coffee"], "find the rocket", plan)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    assert result["status"] == "answered"
    search = next(s for s in result["trace"]["steps"] if s.get("type") == "tool" and s["tool"] == "search")
    hits = search["output"]["results"]
    assert sorted(Path(h["path"]).name for h in hits) == sorted(p.name for p in scan_gallery(gallery))
    assert [h["image"] for h in hits[:3]] == ["img_1", "img_2", "img_3"]  # img_0 is the coffee input
    assert search["output"]["embedded"] + search["output"]["reused"] == 5
    assert not [s for s in result["trace"]["steps"] if s.get("type") == "error"]


# -- GPU -------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_cuda_scores_match_cpu(dtype: str, gallery: Path) -> None:
    cpu = _ctx(_config(), ModelPool(), *(f"sample:{s}" for s in SAMPLES))
    cuda_config = load_config(
        profile="tiny", overrides={"device": "cuda", "dtype": dtype, "models": {"search": {"checkpoint": "tiny:clip"}}},
        environ={"VISAGENT_CACHE_DIR": os.environ["VISAGENT_CACHE_DIR"]},
    )  # fmt: skip
    gpu = _ctx(cuda_config, ModelPool(), *(f"sample:{s}" for s in SAMPLES))
    a = {h.image: h.score for h in Search().run(SearchInput(query="a horse"), cpu).results}
    b = {h.image: h.score for h in Search().run(SearchInput(query="a horse"), gpu).results}
    assert gpu.model_key("search").device == "cuda" and sorted(a) == sorted(b)
    np.testing.assert_allclose([b[k] for k in a], [a[k] for k in a], atol=3e-2)
    out = Search().run(SearchInput(query="a horse", gallery=str(gallery), top_k=100), gpu)
    assert out.embedded == 5 and sorted(h.path for h in out.results) == sorted(str(p) for p in scan_gallery(gallery))
