"""Media inputs: validation, normalization and the per-run media store.

Inputs become ids in the order given: images ``img_0, img_1, ...``, videos ``vid_0, ...``.
Sources: file paths (image or video, detected by content), ``sample:NAME`` (scikit-image's bundled
photos), in-memory PIL images and numpy arrays (HxW or HxWxC, uint8 or float in [0, 1]). Remote
URLs are refused unless ``limits.allow_urls`` is on.

Every problem is a ``MediaError`` with a one-line message naming the input.
"""

from __future__ import annotations

import hashlib
import os
import threading
import warnings
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from visagent.errors import MediaError
from visagent.types import MediaInfo

#: bundled sample images (scikit-image ships them; no download)
SAMPLES = (
    "astronaut", "brick", "camera", "cat", "chelsea", "checkerboard", "clock", "coffee", "coins",
    "colorwheel", "grass", "gravel", "horse", "hubble_deep_field", "immunohistochemistry", "logo",
    "moon", "page", "retina", "rocket", "text",
)  # fmt: skip

# magic bytes of common video containers (content, not extension, decides)
_VIDEO_MAGIC = (
    (4, b"ftyp"),  # mp4 / mov / m4v / 3gp
    (0, b"\x1a\x45\xdf\xa3"),  # matroska / webm
    (8, b"AVI "),  # avi (RIFF....AVI )
    (0, b"FLV"),
    (0, b"OggS"),
    (0, b"\x00\x00\x01\xba"),  # mpeg-ps
    (0, b"\x47"),  # mpeg-ts sync byte (checked further by the decoder)
)


def sample_image(name: str) -> Image.Image:
    """A bundled sample photo by name (see ``SAMPLES``)."""
    if name not in SAMPLES:
        raise MediaError(f"unknown sample image 'sample:{name}'; available: {', '.join(SAMPLES)}")
    cached = _sample_cache() / f"{name}.png"
    try:  # decoded once (importing scikit-image costs more than the image), then read as a lossless PNG
        with Image.open(cached) as img:
            return img.copy()
    except OSError:
        pass
    import skimage.data

    try:
        array = getattr(skimage.data, name)()
    except Exception as exc:  # noqa: BLE001 - e.g. a sample that needs a download
        raise MediaError(f"sample image 'sample:{name}' cannot be loaded here: {exc}") from None
    image = array_to_image(array, f"sample:{name}")
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        partial = cached.with_suffix(f".{os.getpid()}.part")
        image.save(partial, format="PNG")
        os.replace(partial, cached)
    except OSError:  # a read-only cache: decoded again next time
        pass
    return image


def _sample_cache() -> Path:
    """Where decoded sample images are kept: ``$VISAGENT_CACHE_DIR/samples`` (default ``~/.cache/visagent``)."""
    return Path(os.environ.get("VISAGENT_CACHE_DIR") or "~/.cache/visagent").expanduser() / "samples"


def array_to_image(array: Any, source: str = "array") -> Image.Image:
    """numpy HxW / HxWx{1,3,4} (uint8, uint16, bool or float in [0, 1]) -> RGB PIL image."""
    a = np.asarray(array)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (3, 4)) or 0 in a.shape:
        raise MediaError(f"{source}: array of shape {a.shape} is not an image (expected HxW or HxWx3/4)")
    if a.dtype == bool:
        a = a.astype(np.uint8) * 255
    elif a.dtype == np.uint16:
        a = (a >> 8).astype(np.uint8)
    elif np.issubdtype(a.dtype, np.floating):
        if not np.isfinite(a).all():
            raise MediaError(f"{source}: array holds NaN or infinite values")
        a = (np.clip(a, 0.0, 1.0) * 255).round().astype(np.uint8)
    elif a.dtype != np.uint8:
        a = np.clip(a, 0, 255).astype(np.uint8)
    return to_rgb(Image.fromarray(a))


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB (alpha composited on white; 16-bit scaled to 8-bit)."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        a = np.asarray(img).astype(np.float64)
        hi = 65535.0 if img.mode.startswith("I;16") else max(float(a.max()), 1.0)
        return Image.fromarray((np.clip(a / hi, 0, 1) * 255).round().astype(np.uint8)).convert("RGB")
    if img.mode == "F":
        a = np.asarray(img).astype(np.float64)
        lo, hi = float(a.min()), float(a.max())
        a = (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
        return Image.fromarray((a * 255).round().astype(np.uint8)).convert("RGB")
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


#: still-image containers, checked before the video signatures: HEIF / AVIF share mp4's ``ftyp``
#: box and a GIF starts with the MPEG-TS sync byte ("G")
_IMAGE_MAGIC = (
    (0, b"\x89PNG"), (0, b"\xff\xd8\xff"), (0, b"GIF8"), (0, b"BM"), (0, b"II*\x00"), (0, b"MM\x00*"),
    (8, b"WEBP"), (0, b"\x00\x00\x01\x00"),
)  # fmt: skip
_IMAGE_BRANDS = {b"avif", b"avis", b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1"}


def image_format(head: bytes) -> str | None:
    """The still-image container ``head`` starts with (PNG, JPEG, GIF, BMP, TIFF, WebP, ICO, HEIF/AVIF), or None."""
    names = ("PNG", "JPEG", "GIF", "BMP", "TIFF", "TIFF", "WebP", "ICO")
    for (offset, magic), name in zip(_IMAGE_MAGIC, names):
        if head[offset : offset + len(magic)] == magic:
            return name
    if head[4:8] == b"ftyp":
        brands = {head[8:12]} | {head[i : i + 4] for i in range(16, min(len(head), 64), 4)}
        if brands & _IMAGE_BRANDS:
            return "AVIF" if brands & {b"avif", b"avis"} else "HEIF"
    return None


def _looks_like_video(head: bytes) -> bool:
    if image_format(head):
        return False
    for offset, magic in _VIDEO_MAGIC[:-1]:
        if head[offset : offset + len(magic)] == magic:
            return True
    # MPEG-TS: sync byte every 188 bytes
    return len(head) >= 377 and head[0] == 0x47 and head[188] == 0x47 and head[376] == 0x47


def load_image_file(path: Path, max_pixels: int) -> tuple[Image.Image, list[str]]:
    """Open, validate and normalize an image file. Returns (RGB image, notes)."""
    notes: list[str] = []
    limit = max(int(max_pixels), 1)
    old = Image.MAX_IMAGE_PIXELS
    try:
        Image.MAX_IMAGE_PIXELS = limit  # Pillow's decompression-bomb guard at our limit
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(path)
            w, h = img.size
            if w * h > limit:
                raise MediaError(
                    f"{path}: image has {w}x{h} = {w * h / 1e6:.1f} MP, over the limit of "
                    f"{limit / 1e6:.1f} MP (raise limits.max_pixels to allow it)"
                )
            n_frames = getattr(img, "n_frames", 1)
            if n_frames > 1:
                img.seek(0)
                notes.append(f"{path.name}: animated image with {n_frames} frames; using the first frame")
            img.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise MediaError(
            f"{path}: image is over the limit of {limit / 1e6:.1f} MP (raise limits.max_pixels to allow it)"
        ) from None
    except UnidentifiedImageError:
        with open(path, "rb") as fh:
            fmt = image_format(fh.read(64))
        if fmt:
            raise MediaError(f"{path.name}: unsupported image format ({fmt}): this Pillow cannot decode it; convert it to PNG or JPEG") from None
        raise MediaError(f"{path}: not an image or video (unrecognized content)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise MediaError(f"{path}: image file is truncated or corrupt ({exc})") from None
    finally:
        Image.MAX_IMAGE_PIXELS = old
    try:
        transposed = ImageOps.exif_transpose(img)
        if transposed is not None and transposed.size != img.size:
            notes.append(f"{path.name}: EXIF orientation applied")
        img = transposed if transposed is not None else img
    except Exception:  # noqa: BLE001 - a broken EXIF block is not fatal
        notes.append(f"{path.name}: unreadable EXIF orientation ignored")
    mode = img.mode
    img = to_rgb(img)
    if mode != "RGB":
        notes.append(f"{path.name}: converted from {mode} to RGB")
    return img, notes


def _remove_file(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def check_path(path: Path) -> None:
    long = next((part for part in path.parts if len(part.encode()) > 255), None)
    if long is not None:
        raise MediaError(f"file name too long ({len(long.encode())} bytes; at most 255): {long[:40]}...")
    try:
        if not path.exists():
            raise MediaError(f"media not found: {path}")
        if path.is_dir():
            raise MediaError(f"{path} is a directory, not an image or video file")
        if not path.is_file():
            raise MediaError(f"{path} is not a regular file")
    except OSError as exc:
        raise MediaError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if path.stat().st_size == 0:
        raise MediaError(f"{path} is empty (0 bytes)")


def probe_video(path: Path, max_pixels: int) -> dict[str, Any]:
    """Open a video with PyAV and check it has decodable video frames. Returns width/height/duration."""
    try:
        import av
    except ImportError:
        raise MediaError(f"{path}: videos need PyAV: pip install 'visagent[video]'") from None
    try:
        with av.open(str(path)) as container:
            streams = container.streams.video
            if not streams:
                raise MediaError(f"{path}: no video stream (audio-only or not a video)")
            stream = streams[0]
            width, height = stream.codec_context.width, stream.codec_context.height
            if width * height > max_pixels:
                raise MediaError(
                    f"{path}: video frames are {width}x{height}, over the limit of "
                    f"{max_pixels / 1e6:.1f} MP per frame (limits.max_video_pixels)"
                )
            first = next(container.decode(stream), None)
            if first is None:
                raise MediaError(f"{path}: video has 0 decodable frames")
            if int(getattr(first, "rotation", 0) or 0) % 180 == 90:  # display matrix: shown portrait
                width, height = height, width
            duration = None
            if stream.duration is not None and stream.time_base is not None:
                duration = float(stream.duration * stream.time_base)
            elif container.duration is not None:
                duration = container.duration / 1_000_000
            return {"width": width, "height": height, "duration": duration, "frames": stream.frames}
    except MediaError:
        raise
    except Exception as exc:  # noqa: BLE001 - av raises many error types
        raise MediaError(f"{path}: video is corrupt or unreadable ({type(exc).__name__}: {exc})") from None


def video_poster(path: Path, at: float = 0.5) -> Image.Image:
    """One RGB frame of a video, shown at fraction ``at`` of its duration (0.5: the middle), turned
    as the display matrix says. The first frame where the duration is unknown."""
    try:
        import av
    except ImportError:
        raise MediaError(f"{path}: videos need PyAV: pip install 'visagent[video]'") from None
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            duration = None
            if stream.duration is not None and stream.time_base is not None:
                duration = float(stream.duration * stream.time_base)
            elif container.duration is not None:
                duration = container.duration / 1_000_000
            target = None
            if duration and stream.time_base is not None:
                start = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
                target = start + duration * min(max(at, 0.0), 1.0)
                container.seek(int(target / float(stream.time_base)), stream=stream, backward=True, any_frame=False)
            chosen = None
            for frame in container.decode(stream):
                if chosen is not None and (target is None or frame.time is None or frame.time > target):
                    break
                chosen = frame
            if chosen is None:
                raise MediaError(f"{path}: video has 0 decodable frames")
            img = chosen.to_image()
            rotation = int(getattr(chosen, "rotation", 0) or 0) % 360
            return img.rotate(rotation, expand=True) if rotation else img
    except MediaError:
        raise
    except Exception as exc:  # noqa: BLE001 - av raises many error types
        raise MediaError(f"{path}: video is corrupt or unreadable ({type(exc).__name__}: {exc})") from None


def sha256_image(img: Image.Image) -> str:
    h = hashlib.sha256()
    h.update(f"{img.size}".encode())
    h.update(img.tobytes())
    return h.hexdigest()


@dataclass
class _Item:
    info: MediaInfo
    image: Image.Image | None = None
    path: Path | None = None
    cache: dict[str, Any] = field(default_factory=dict)
    temporary: bool = False  # the file is the store's own copy of bytes or a download


class MediaStore:
    """The media of one run: validated images and videos by id, and per-image caches."""

    def __init__(self, max_pixels: int = 50_000_000, allow_urls: bool = False, max_video_pixels: int = 8_294_400):
        self.max_pixels = max_pixels
        self.allow_urls = allow_urls
        self.max_video_pixels = max_video_pixels
        self._items: dict[str, _Item] = {}
        self._counts = {"image": 0, "video": 0}
        self._lock = threading.Lock()

    # -- adding ------------------------------------------------------------------------------
    def add(self, source: Any) -> str:
        """Validate ``source`` and register it; returns its id (``img_k`` or ``vid_k``)."""
        if isinstance(source, Image.Image):
            return self.add_image(to_rgb(source.copy()), "pil")
        if isinstance(source, np.ndarray):
            return self.add_image(array_to_image(source), "array")
        if isinstance(source, (bytes, bytearray)):
            return self._add_bytes(bytes(source), "bytes")
        if not isinstance(source, (str, os.PathLike)):
            raise MediaError(f"unsupported media input of type {type(source).__name__} (use a path, PIL image or array)")
        text = str(source)
        if text.startswith("sample:"):
            return self.add_image(sample_image(text[len("sample:") :]), text)
        if text.startswith(("http://", "https://")):
            if not self.allow_urls:
                raise MediaError(f"remote URLs are off: {text} (download it first, or set limits.allow_urls: true)")
            return self._add_url(text)
        return self.add_path(Path(os.path.expanduser(text)))

    def add_path(self, path: Path) -> str:
        check_path(path)
        with open(path, "rb") as fh:
            head = fh.read(512)
        if _looks_like_video(head):
            meta = probe_video(path, self.max_video_pixels)
            info = MediaInfo(
                id="", kind="video", source=str(path), width=meta["width"], height=meta["height"],
                sha256=file_sha256(path),
            )  # fmt: skip
            return self._register(_Item(info=info, path=path), "video")
        img, notes = load_image_file(path, self.max_pixels)
        return self.add_image(img, str(path), notes=notes)

    def _add_bytes(self, data: bytes, source: str) -> str:
        if not data:
            raise MediaError(f"{source}: empty (0 bytes)")
        import tempfile

        if _looks_like_video(data[:512]):
            tmp = tempfile.NamedTemporaryFile(prefix="visagent-", suffix=".video", delete=False)
            tmp.write(data)
            tmp.close()
            # the store's own copy, removed with the store (or at exit)
            weakref.finalize(self, _remove_file, tmp.name)
            try:
                media_id = self.add_path(Path(tmp.name))
            except MediaError:
                _remove_file(tmp.name)
                raise
            self._items[media_id].temporary = True
            return media_id
        with tempfile.TemporaryDirectory(prefix="visagent-") as tmp_dir:  # decoded in full, then removed
            p = Path(tmp_dir) / "upload"
            p.write_bytes(data)
            img, notes = load_image_file(p, self.max_pixels)
        return self.add_image(img, source, notes=notes)

    def _add_url(self, url: str) -> str:
        import urllib.request

        try:
            with urllib.request.urlopen(url, timeout=30) as resp:  # noqa: S310 - opt-in
                return self._add_bytes(resp.read(), url)
        except OSError as exc:
            raise MediaError(f"{url}: cannot be downloaded ({exc})") from None

    def add_image(
        self, image: Image.Image, source: str, notes: list[str] | None = None, **extra: Any
    ) -> str:
        """Register an RGB image (e.g. a frame a tool produced); returns its new ``img_k`` id."""
        w, h = image.size
        if w * h > self.max_pixels:
            raise MediaError(
                f"{source}: image has {w * h / 1e6:.1f} MP, over the limit of {self.max_pixels / 1e6:.1f} MP"
            )
        info = MediaInfo(
            id="", kind="image", source=source, width=w, height=h, sha256=sha256_image(image),
            notes=list(notes or []), **extra,
        )  # fmt: skip
        return self._register(_Item(info=info, image=to_rgb(image)), "image")

    def save_copies(self, folder: Path, prefix: str, every_input: bool = False) -> int:
        """Write a lossless copy of each input without a file of its own (in-memory images and
        arrays, bytes, URLs; with ``every_input`` all but ``sample:`` images) into ``folder`` as
        ``PREFIX-ID.png`` (images) or ``PREFIX-ID.video`` (the video file), and note its name in the
        input's ``MediaInfo.saved_copy``. Returns how many."""
        import shutil

        saved = 0
        for media_id, item in list(self._items.items()):
            info = item.info
            if info.parent or info.saved_copy:
                continue
            url = info.source.startswith(("http://", "https://"))
            fileless = info.source in ("pil", "array", "bytes") or url
            if item.image is not None and (fileless or (every_input and not info.source.startswith("sample:"))):
                folder.mkdir(parents=True, exist_ok=True)
                target = folder / f"{prefix}-{media_id}.png"
                item.image.save(target, format="PNG")
            elif item.path is not None and (item.temporary or every_input):
                folder.mkdir(parents=True, exist_ok=True)
                target = folder / f"{prefix}-{media_id}.video"
                shutil.copyfile(item.path, target)
            else:
                continue
            info.saved_copy = f"{folder.name}/{target.name}"
            saved += 1
        return saved

    def _register(self, item: _Item, kind: str) -> str:
        with self._lock:
            prefix = "img" if kind == "image" else "vid"
            media_id = f"{prefix}_{self._counts[kind]}"
            self._counts[kind] += 1
            item.info.id = media_id
            self._items[media_id] = item
        return media_id

    # -- access ------------------------------------------------------------------------------
    def _get(self, media_id: str) -> _Item:
        try:
            return self._items[media_id]
        except KeyError:
            known = ", ".join(self._items) or "none"
            raise MediaError(f"unknown media id '{media_id}'; available: {known}") from None

    def image(self, media_id: str) -> Image.Image:
        item = self._get(media_id)
        if item.image is None:
            raise MediaError(f"'{media_id}' is a video, not an image (use video_frames to get its frames)")
        return item.image

    def video_path(self, media_id: str) -> Path:
        item = self._get(media_id)
        if item.path is None or item.info.kind != "video":
            raise MediaError(f"'{media_id}' is an image, not a video")
        return item.path

    def info(self, media_id: str) -> MediaInfo:
        return self._get(media_id).info

    def cache(self, media_id: str) -> dict[str, Any]:
        """Per-media cache for the run (e.g. ``{"sam_image_embedding:<model>": tensor}``)."""
        return self._get(media_id).cache

    def ids(self, kind: str | None = None) -> list[str]:
        return [k for k, v in self._items.items() if kind is None or v.info.kind == kind]

    def infos(self) -> list[MediaInfo]:
        return [v.info for v in self._items.values()]

    def __contains__(self, media_id: object) -> bool:
        return media_id in self._items

    def __len__(self) -> int:
        return len(self._items)


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's content (hex), read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()

