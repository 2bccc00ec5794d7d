"""``search`` (images ranked by similarity to a text) and ``classify`` (zero-shot labels).

Dual encoders from transformers, the architecture picked from the checkpoint's ``config.json``
``model_type``: ``clip`` (default ``openai/clip-vit-large-patch14``), ``siglip``
(``google/siglip-so400m-patch14-384``) or ``flava`` (``facebook/flava-full``). Embeddings come from
``get_image_features`` / ``get_text_features`` (FLAVA: the projected CLS token), L2-normalized;
similarity is the cosine.

Gallery index: ``search`` over a folder embeds its images once. The index is an ``.npz`` file in
``<cache_dir>/search-index/`` named after the folder and the model: it maps each file's SHA-256 to
its embedding, and each path to (size, mtime, SHA-256) so unchanged files are not even re-read.
Later searches reuse it and update it incrementally: new and changed files are embedded, removed
files dropped. Images are decoded by a small thread pool one batch ahead of the model, embedded in
batches (``options.batch_size``, default 64 on a GPU, 16 on the CPU; ``options.workers`` decoding
threads, default min(8, CPUs)), with progress reported per batch. Files are recognized as images by content (magic bytes), not by extension.

Batching across runs: ``image_features_many(requests)`` / ``text_features_many(requests)`` embed
the image lists / text lists of concurrent calls in one forward (each request gets its own (n, D)
rows back); ``embed_images`` / ``embed_texts`` are the batch of one. Run images and query texts of
``search`` / ``classify`` go through the model's batcher; a gallery refresh (already batched by
``options.batch_size``) holds the model lock instead. Images are resized to the processor's fixed
size, texts padded to the longest with an attention mask (CLIP pools at the end-of-text token,
SigLIP pads to its trained length), so batched rows equal unbatched ones within float tolerance.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field, field_validator

from visagent.errors import ToolError
from visagent.media import file_sha256
from visagent.tools.base import NonEmptyStr, Tool, ToolInput, ToolOutput, clip_text, path_field
from visagent.tools.models import batched, checked_config, register_loader

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    from PIL import Image

log = logging.getLogger(__name__)

FAMILY = "search"
SUPPORTED = ("clip", "siglip", "flava")
INDEX_VERSION = 1
DEFAULT_TEMPLATES = ("a photo of a {label}.", "a photo of the {label}.", "a close-up photo of a {label}.")
_IMAGE_MAGIC = (
    (0, b"\xff\xd8\xff"), (0, b"\x89PNG\r\n\x1a\n"), (0, b"GIF87a"), (0, b"GIF89a"), (0, b"BM"),
    (0, b"II*\x00"), (0, b"MM\x00*"), (8, b"WEBP"), (4, b"ftypavif"), (4, b"ftypheic"), (0, b"\x00\x00\x00\x0cjP  "),
)  # fmt: skip


# -- the encoder bundle ----------------------------------------------------------------------
@dataclass
class DualEncoder:
    """A loaded dual encoder. ``embed_images`` / ``embed_texts`` return float32 numpy arrays of
    shape (N, D), rows L2-normalized. ``logit_scale`` (already exponentiated) and ``logit_bias``
    turn cosines into logits."""

    model: Any
    processor: Any
    model_type: str
    device: str
    batch_size: int
    logit_scale: float
    logit_bias: float = 0.0
    workers: int = 4
    calls: dict[str, int] = field(default_factory=lambda: {"images": 0, "texts": 0})

    def _features(self, out: Any) -> Any:
        feats = out.pooler_output if hasattr(out, "pooler_output") else out
        if feats.ndim == 3:  # FLAVA projects every token: the CLS token is the embedding
            feats = feats[:, 0, :]
        feats = feats.float()
        return feats / feats.norm(dim=-1, keepdim=True).clamp_min(1e-12)

    def image_features_many(self, requests: list[list["Image.Image"]]) -> list["np.ndarray"]:
        """Per request (a list of n_i images): (n_i, D) float32 embeddings; one forward for all."""
        return _split(self.embed_images([img for r in requests for img in r]), [len(r) for r in requests])

    def text_features_many(self, requests: list[list[str]]) -> list["np.ndarray"]:
        """Per request (a list of n_i texts): (n_i, D) float32 embeddings; one forward for all."""
        return _split(self.embed_texts([t for r in requests for t in r]), [len(r) for r in requests])

    def embed_images(self, images: list["Image.Image"]) -> "np.ndarray":
        """(N, D) embeddings of RGB images, one forward pass for the whole list."""
        import torch

        self.calls["images"] += 1
        pixels = self.processor(images=images, return_tensors="pt")["pixel_values"]
        pixels = pixels.to(self.device, self.model.dtype)
        with torch.inference_mode():
            feats = self._features(self.model.get_image_features(pixel_values=pixels))
        return feats.cpu().numpy()

    def embed_texts(self, texts: list[str]) -> "np.ndarray":
        """(N, D) embeddings of texts (SigLIP pads to its trained length, as it expects)."""
        import torch

        self.calls["texts"] += 1
        padding: Any = "max_length" if self.model_type == "siglip" else True
        inputs = self.processor(text=texts, return_tensors="pt", padding=padding, truncation=True)
        keep = {k: v.to(self.device) for k, v in inputs.items() if k in ("input_ids", "attention_mask")}
        with torch.inference_mode():
            feats = self._features(self.model.get_text_features(**keep))
        return feats.cpu().numpy()


def _split(rows: "np.ndarray", counts: list[int]) -> list["np.ndarray"]:
    out, start = [], 0
    for n in counts:
        out.append(rows[start : start + n])
        start += n
    return out


@register_loader(FAMILY, "transformers")
def load_dual_encoder(checkpoint: str, device: str, dtype: Any, options: dict[str, Any]) -> DualEncoder:
    """CLIP / SigLIP / FLAVA from a Hub id or local folder (``AutoModel`` + ``AutoProcessor``)."""
    from transformers import AutoModel, AutoProcessor

    model_type = checked_config(checkpoint, "search", SUPPORTED).model_type
    model = AutoModel.from_pretrained(checkpoint, dtype=dtype).to(device).eval()
    processor = AutoProcessor.from_pretrained(checkpoint)
    scale = float(model.logit_scale.detach().float().exp().reshape(-1)[0]) if hasattr(model, "logit_scale") else 100.0
    bias = float(model.logit_bias.detach().float().reshape(-1)[0]) if getattr(model, "logit_bias", None) is not None else 0.0
    batch = int(options.get("batch_size", 64 if device.startswith("cuda") else 16))
    workers = int(options.get("workers", min(8, os.cpu_count() or 1)))
    return DualEncoder(model, processor, model_type, device, max(batch, 1), scale, bias, max(workers, 1))


# -- gallery index ---------------------------------------------------------------------------
def is_image_file(path: Path) -> bool:
    """Whether ``path`` starts with the magic bytes of a common image format."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(16)
    except OSError:
        return False
    return any(head[o : o + len(m)] == m for o, m in _IMAGE_MAGIC)


def scan_gallery(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursive, hidden entries skipped), sorted by relative path."""
    if not folder.exists():
        raise ToolError(f"gallery folder not found: {folder}")
    if not folder.is_dir():
        raise ToolError(f"gallery {folder} is not a folder")
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in files:
            p = Path(root) / name
            if not name.startswith(".") and p.is_file() and is_image_file(p):
                found.append(p)
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())


def load_gallery_image(path: Path, size_hint: int = 448) -> "Image.Image":
    """Open an image file as RGB with EXIF orientation applied (JPEGs decoded at reduced size)."""
    from PIL import Image, ImageOps

    from visagent.media import to_rgb

    img = Image.open(path)
    if img.format == "JPEG":
        img.draft("RGB", (size_hint, size_hint))  # DCT scaling: much faster decode of big photos
    img.load()
    return to_rgb(ImageOps.exif_transpose(img) or img)


@dataclass
class IndexUpdate:
    """What an index refresh did. ``embeddings``: (N, D) float32 rows for ``paths``."""

    paths: list[Path]
    embeddings: "np.ndarray"
    embedded: int
    reused: int
    removed: int
    skipped: list[str]
    created: bool
    index_file: Path


class GalleryIndex:
    """The embedding index of one folder for one model (see the module docstring).

    File: ``<root>/<sha1(folder)[:16]>-<sha1(model_key)[:12]>.npz`` holding ``keys`` (SHA-256 hex
    per row), ``emb`` ((N, D) float32) and ``meta`` (JSON: version, folder, model key, and
    ``files``: {relative path: [size, mtime_ns, sha256]})."""

    def __init__(self, folder: Path, model_key: str, root: Path) -> None:
        self.folder = folder.resolve()
        self.model_key = model_key
        tag = hashlib.sha1(str(self.folder).encode()).hexdigest()[:16]
        mtag = hashlib.sha1(model_key.encode()).hexdigest()[:12]
        self.path = root / f"{tag}-{mtag}.npz"

    def _load(self) -> tuple[dict[str, Any], dict[str, "np.ndarray"]] | None:
        import numpy as np

        if not self.path.exists():
            return None
        try:
            with np.load(self.path, allow_pickle=False) as data:
                meta = json.loads(str(data["meta"]))
                keys = [str(k) for k in data["keys"]]
                emb = np.asarray(data["emb"], dtype=np.float32)
        except Exception as exc:  # noqa: BLE001 - a broken index is rebuilt
            log.warning("gallery index %s is unreadable (%s); rebuilding it", self.path, exc)
            return None
        if meta.get("version") != INDEX_VERSION or meta.get("model") != self.model_key or len(keys) != len(emb):
            return None
        return meta, dict(zip(keys, emb))

    def _save(self, files: dict[str, list[Any]], vectors: dict[str, "np.ndarray"], dim: int) -> None:
        import numpy as np

        keys = sorted(vectors)
        emb = np.stack([vectors[k] for k in keys]).astype(np.float32) if keys else np.zeros((0, dim), np.float32)
        meta = {"version": INDEX_VERSION, "folder": str(self.folder), "model": self.model_key, "files": files}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + f".{os.getpid()}.tmp.npz")
        np.savez(tmp, keys=np.array(keys, dtype="<U64"), emb=emb, meta=np.array(json.dumps(meta)))
        os.replace(tmp, self.path)

    def refresh(
        self,
        embed: Callable[[list["Image.Image"]], "np.ndarray"],
        batch_size: int,
        progress: Callable[[str, int, int], None] | None = None,
        workers: int = 4,
    ) -> IndexUpdate:
        """Bring the index up to date with the folder and return every current file's embedding.
        ``embed(images) -> (N, D)`` embeds a batch of RGB images; ``workers`` threads decode the
        next batch while the current one is embedded."""
        import numpy as np
        from filelock import FileLock

        self.path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.path) + ".lock"):
            loaded = self._load()
            old_files: dict[str, list[Any]] = loaded[0]["files"] if loaded else {}
            vectors: dict[str, np.ndarray] = loaded[1] if loaded else {}
            paths = scan_gallery(self.folder)
            files: dict[str, list[Any]] = {}
            for p in paths:
                rel = p.relative_to(self.folder).as_posix()
                st = p.stat()
                prev = old_files.get(rel)
                if prev and prev[0] == st.st_size and prev[1] == st.st_mtime_ns:
                    files[rel] = prev
                else:
                    files[rel] = [st.st_size, st.st_mtime_ns, file_sha256(p)]
            todo: dict[str, Path] = {}
            for rel, (_, _, sha) in files.items():
                if sha not in vectors and sha not in todo:
                    todo[sha] = self.folder / rel
            skipped: list[str] = []
            new = self._embed_all(todo, embed, batch_size, progress, workers, skipped)
            bad = {sha for sha, path in todo.items() if path.relative_to(self.folder).as_posix() in skipped}
            files = {rel: v for rel, v in files.items() if v[2] not in bad}
            current = {v[2] for v in files.values()}
            removed = len(set(old_files) - set(files))
            vectors.update(new)
            vectors = {k: v for k, v in vectors.items() if k in current}
            dim = next(iter(vectors.values())).shape[0] if vectors else 0
            if new or removed or not loaded or files != old_files:
                self._save(files, vectors, dim)
            order = [self.folder / rel for rel in files]
            emb = np.stack([vectors[files[rel][2]] for rel in files]) if files else np.zeros((0, dim), np.float32)
            return IndexUpdate(
                paths=order, embeddings=emb, embedded=len(new), reused=sum(1 for v in files.values() if v[2] not in new),
                removed=removed, skipped=skipped, created=loaded is None, index_file=self.path,
            )  # fmt: skip

    def _embed_all(
        self,
        todo: dict[str, Path],
        embed: Callable[[list["Image.Image"]], "np.ndarray"],
        batch_size: int,
        progress: Callable[[str, int, int], None] | None,
        workers: int,
        skipped: list[str],
    ) -> dict[str, "np.ndarray"]:
        from concurrent.futures import ThreadPoolExecutor

        items = list(todo.items())
        total = len(items)
        out: dict[str, Any] = {}
        if not items:
            return out

        def load(item: tuple[str, Path]) -> tuple[str, Path, Any]:
            try:
                return item[0], item[1], load_gallery_image(item[1])
            except Exception as exc:  # noqa: BLE001 - one bad file does not stop the gallery
                return item[0], item[1], exc

        batches = [items[i : i + batch_size] for i in range(0, total, batch_size)]
        done = 0
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            pending = [pool.submit(load, it) for it in batches[0]]
            for b in range(len(batches)):
                loaded = [f.result() for f in pending]
                pending = [pool.submit(load, it) for it in batches[b + 1]] if b + 1 < len(batches) else []
                good = [(sha, img) for sha, _, img in loaded if not isinstance(img, Exception)]
                for _, path, img in loaded:
                    if isinstance(img, Exception):
                        skipped.append(path.relative_to(self.folder).as_posix())
                        log.warning("gallery: skipping unreadable image %s (%s)", path, img)
                if good:
                    vecs = embed([img for _, img in good])
                    for (sha, _), vec in zip(good, vecs):
                        out[sha] = vec
                done += len(loaded)
                if progress is not None:
                    progress("embedding gallery", done, total)
        return out


# -- search ----------------------------------------------------------------------------------
class SearchInput(ToolInput):
    """``images``: image ids to rank (default: every image of the run, unless ``gallery`` is
    given). ``gallery``: a folder of image files to rank (indexed once, then reused)."""

    query: NonEmptyStr = Field(min_length=1, description="what to look for, e.g. 'a red car at night'")
    images: list[str] | None = Field(default=None, description="image ids to rank (default: all images of the run)")
    gallery: str | None = path_field("folder of image files to rank", default=None)
    top_k: int = Field(default=10, ge=1, le=1000, description="how many results to return")
    register_top: int = Field(default=3, ge=0, le=20, description="gallery hits registered as images (img_k) for later tools")


class SearchHit(BaseModel):
    """One ranked candidate. ``image``: its image id (a run image, or a gallery file registered as
    a new image), None for gallery files not registered; ``path``: the gallery file;
    ``score``: cosine similarity in [-1, 1]."""

    image: str | None = None
    path: str | None = None
    score: float


class SearchOutput(ToolOutput):
    query: str
    results: list[SearchHit]
    candidates: int
    gallery: str | None = None
    embedded: int = 0
    reused: int = 0
    removed: int = 0
    skipped: list[str] = Field(default_factory=list)

    def observation(self) -> str:
        parts = []
        for i, h in enumerate(self.results):
            name = h.image or Path(h.path or "?").name
            if h.image and h.path:
                name = f"{h.image} ({Path(h.path).name})"
            parts.append(f"{i + 1}. {name} {h.score:.3f}")
        src = f" in {self.gallery}" if self.gallery else ""
        return clip_text(f"top {len(self.results)} of {self.candidates} images{src} for {self.query!r}: " + "; ".join(parts))


def _model_key(ctx: Any, bundle: DualEncoder) -> str:
    mc = ctx.config.model(FAMILY)
    key = ctx.model_key(FAMILY)
    return f"{mc.checkpoint}|{mc.revision or ''}|{bundle.model_type}|{key.dtype}"


def _image_embeddings(ctx: Any, m: Any, ids: list[str], model_key: str) -> "np.ndarray":
    """Embeddings of run images, cached per image for the run (``ctx.media_cache``); ``m``: the
    model's batched handle (``visagent.tools.models.batched``)."""
    import numpy as np

    slot = f"search_embedding:{model_key}"
    missing = [i for i in ids if slot not in ctx.media_cache(i)]
    size = m.model.batch_size
    for start in range(0, len(missing), size):
        chunk = missing[start : start + size]
        vecs = m.submit("image_features_many", [ctx.image(i) for i in chunk])
        for i, v in zip(chunk, vecs):
            ctx.media_cache(i)[slot] = v
    ctx.cache["search_image_embedding"] = "hit" if not missing else ("miss" if len(missing) == len(ids) else "partial")
    return np.stack([ctx.media_cache(i)[slot] for i in ids])


def rank(scores: "np.ndarray") -> list[int]:
    """Indices by descending score (stable: ties keep their input order)."""
    import numpy as np

    return [int(i) for i in np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")]


class Search(Tool):
    name = "search"
    description = (
        "Rank images by similarity to a text query (CLIP): the run's images, given image ids, or a "
        "folder of image files (gallery, indexed once). Returns image ids/paths with scores."
    )
    families = (FAMILY,)

    def run(self, input: SearchInput, ctx: Any) -> SearchOutput:  # noqa: A002
        if input.gallery and input.images:
            raise ToolError("give either images or gallery, not both")
        if input.gallery:
            return self._gallery(input, ctx)
        ids = list(dict.fromkeys(input.images)) if input.images else ctx.image_ids()
        if not ids:
            raise ToolError("no images to search: the run has none (give images or a gallery folder)")
        for i in ids:
            _check_image(ctx, i)
        with batched(ctx, FAMILY) as m:
            key = _model_key(ctx, m.model)
            text = m.submit("text_features_many", [input.query])[0]
            emb = _image_embeddings(ctx, m, ids, key)
        scores = emb @ text
        order = rank(scores)[: input.top_k]
        hits = [SearchHit(image=ids[i], score=round(float(scores[i]), 6)) for i in order]
        return SearchOutput(query=input.query, results=hits, candidates=len(ids))

    def _gallery(self, input: SearchInput, ctx: Any) -> SearchOutput:  # noqa: A002
        assert input.gallery is not None
        with ctx.model(FAMILY) as bundle:  # a whole index refresh: the model stays locked
            key = _model_key(ctx, bundle)
            text = bundle.embed_texts([input.query])[0]
            folder = Path(os.path.expanduser(input.gallery))
            index = GalleryIndex(folder, key, ctx.config.cache_path / "search-index")
            upd = index.refresh(bundle.embed_images, bundle.batch_size, ctx.progress, bundle.workers)
            ctx.cache["gallery_index"] = "miss" if upd.created else ("hit" if upd.embedded == 0 else "updated")
            if not upd.paths:
                raise ToolError(f"gallery {folder} holds no readable images")
            scores = upd.embeddings @ text
            order = rank(scores)[: input.top_k]
            hits = []
            for n, i in enumerate(order):
                image_id = None
                if n < input.register_top:
                    image_id = _register(ctx, upd.paths[i])
                hits.append(SearchHit(image=image_id, path=str(upd.paths[i]), score=round(float(scores[i]), 6)))
            return SearchOutput(
                query=input.query, results=hits, candidates=len(upd.paths), gallery=str(folder),
                embedded=upd.embedded, reused=upd.reused, removed=upd.removed, skipped=upd.skipped,
            )  # fmt: skip


def _register(ctx: Any, path: Path) -> str | None:
    """Register a gallery file as a run image; None (logged) when it cannot be (e.g. too large)."""
    try:
        return ctx.add_image(load_gallery_image(path, 1 << 30), str(path))
    except Exception as exc:  # noqa: BLE001 - the ranking stays valid without the registration
        log.warning("gallery hit %s not registered as an image: %s", path, exc)
        return None


def _check_image(ctx: Any, image_id: str) -> None:
    try:
        ctx.image(image_id)
    except ToolError:
        raise
    except Exception as exc:  # noqa: BLE001 - MediaError: unknown id or a video
        raise ToolError(str(exc)) from None


# -- classify --------------------------------------------------------------------------------
class ClassifyInput(ToolInput):
    """``templates``: prompt templates holding ``{label}``; the text embedding of a label is the
    normalized mean over its templates (CLIP's prompt ensembling)."""

    image: str = Field(description="image id, e.g. img_0")
    labels: list[str] = Field(min_length=2, max_length=200, description="candidate labels, e.g. ['cat', 'dog']")
    templates: list[str] | None = Field(default=None, description="prompt templates with {label}")

    @field_validator("labels")
    @classmethod
    def _labels(cls, v: list[str]) -> list[str]:
        cleaned = [s.strip() for s in v]
        if any(not s for s in cleaned):
            raise ValueError("labels must be non-empty strings")
        dupes = sorted({s for s in cleaned if cleaned.count(s) > 1})
        if dupes:
            raise ValueError(f"duplicate labels: {', '.join(dupes)}")
        return cleaned

    @field_validator("templates")
    @classmethod
    def _templates(cls, v: list[str] | None) -> list[str] | None:
        if v is not None:
            if not v:
                raise ValueError("templates must not be empty (omit it for the defaults)")
            bad = [t for t in v if "{label}" not in t]
            if bad:
                raise ValueError(f"template {bad[0]!r} has no {{label}} placeholder")
        return v


class LabelProb(BaseModel):
    label: str
    prob: float


class ClassifyOutput(ToolOutput):
    """``labels``: every label once with its probability (softmax over the labels), most likely first."""

    image: str
    labels: list[LabelProb]

    def observation(self) -> str:
        parts = ", ".join(f"{p.label} {p.prob:.2f}" for p in self.labels)
        return clip_text(f"{self.image}: {parts}")


class Classify(Tool):
    name = "classify"
    families = (FAMILY,)
    description = "Zero-shot classification of an image over given labels (CLIP); returns a probability per label."

    def run(self, input: ClassifyInput, ctx: Any) -> ClassifyOutput:  # noqa: A002
        import numpy as np

        _check_image(ctx, input.image)
        templates = input.templates or list(DEFAULT_TEMPLATES)
        with batched(ctx, FAMILY) as m:
            bundle = m.model
            key = _model_key(ctx, bundle)
            img = _image_embeddings(ctx, m, [input.image], key)[0]
            prompts = [t.replace("{label}", label) for label in input.labels for t in templates]
            text = m.submit("text_features_many", prompts).reshape(len(input.labels), len(templates), -1).mean(axis=1)
            text = text / np.maximum(np.linalg.norm(text, axis=-1, keepdims=True), 1e-12)
            logits = bundle.logit_scale * (text @ img) + bundle.logit_bias
        logits = logits - logits.max()
        probs = np.exp(logits) / np.exp(logits).sum()
        order = rank(probs)
        return ClassifyOutput(
            image=input.image, labels=[LabelProb(label=input.labels[i], prob=float(probs[i])) for i in order]
        )
