"""Media validation: every bad input is a one-line MediaError naming it; modes become RGB."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from visagent.errors import MediaError
from visagent.media import SAMPLES, MediaStore


def png_bytes(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def write(path, data) -> object:
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return path


def one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg and "Traceback" not in msg
    return msg


@pytest.fixture
def store() -> MediaStore:
    return MediaStore(max_pixels=1_000_000)


def test_ids_in_order_given(store, tmp_path):
    p = tmp_path / "a.png"
    Image.new("RGB", (10, 20), "red").save(p)
    ids = [store.add(x) for x in (str(p), "sample:coins", np.zeros((5, 6, 3), np.uint8), Image.new("L", (4, 4)))]
    assert ids == ["img_0", "img_1", "img_2", "img_3"]
    assert store.image("img_0").size == (10, 20)
    assert store.info("img_1").source == "sample:coins"
    assert all(store.image(i).mode == "RGB" for i in ids)


@pytest.mark.parametrize("name", ["astronaut", "chelsea", "coffee", "coins", "page", "rocket"])
def test_samples_load_offline(store, name):
    assert name in SAMPLES
    img = store.image(store.add(f"sample:{name}"))
    assert img.mode == "RGB" and min(img.size) > 100


@pytest.mark.parametrize(
    "make, fragment",
    [
        (lambda d: d / "missing.png", "media not found"),
        (lambda d: d, "is a directory"),
        (lambda d: write(d / "empty.png", b""), "empty (0 bytes)"),
        (lambda d: write(d / "notes.txt", "hello world, not an image"), "not an image or video"),
        (lambda d: write(d / "cut.png", png_bytes(Image.new("RGB", (300, 300), "blue"))[:200]), "truncated or corrupt"),
        (lambda d: write(d / "cut.jpg", png_bytes(Image.effect_noise((300, 300), 50).convert("RGB"), "JPEG")[:800]), "truncated or corrupt"),
        (lambda d: write(d / "big.png", png_bytes(Image.new("L", (2000, 1000)))), "over the limit of 1.0 MP"),
        (lambda d: d / "sub" / ".." / "nothing.jpg", "media not found"),
    ],
)
def test_bad_files_give_one_line_errors(store, tmp_path, make, fragment):
    target = make(tmp_path)
    with pytest.raises(MediaError) as exc:
        store.add(str(target))
    assert fragment in one_line(exc)
    assert len(store) == 0


def test_decompression_bomb_guard(tmp_path):
    p = tmp_path / "bomb.png"
    Image.new("1", (5000, 5000)).save(p)  # tiny file, 25 MP
    with pytest.raises(MediaError) as exc:
        MediaStore(max_pixels=2_000_000).add(str(p))
    assert "MP" in one_line(exc)


@pytest.mark.parametrize("mode", ["CMYK", "L", "LA", "P", "RGBA", "I;16", "1", "I", "F"])
def test_modes_become_rgb(store, tmp_path, mode):
    img = Image.new("RGB", (16, 8), (200, 100, 50)).convert(mode) if mode not in ("I;16",) else Image.fromarray(
        np.full((8, 16), 40000, np.uint16)
    )
    fmt = "TIFF" if mode in ("CMYK", "I;16", "I", "F") else "PNG"
    p = tmp_path / f"m.{fmt.lower()}"
    img.save(p, format=fmt)
    media_id = store.add(str(p))
    out = store.image(media_id)
    assert out.mode == "RGB" and out.size == (16, 8)
    if mode != "RGB":
        assert any("converted from" in n for n in store.info(media_id).notes)
    if mode == "I;16":
        assert out.getpixel((0, 0))[0] == round(40000 / 65535 * 255)


def test_alpha_is_composited_on_white(store, tmp_path):
    p = tmp_path / "t.png"
    Image.new("RGBA", (4, 4), (255, 0, 0, 0)).save(p)
    assert store.image(store.add(str(p))).getpixel((0, 0)) == (255, 255, 255)


def test_exif_orientation_applied(store, tmp_path):
    img = Image.new("RGB", (40, 20), "white")
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 CW to display
    p = tmp_path / "rot.jpg"
    img.save(p, exif=exif)
    media_id = store.add(str(p))
    assert store.image(media_id).size == (20, 40)
    assert any("EXIF orientation" in n for n in store.info(media_id).notes)


def test_animated_gif_uses_first_frame_and_notes_it(tmp_path, make_agent):
    frames = [Image.new("RGB", (10, 10), c) for c in ("red", "green", "blue")]
    p = tmp_path / "anim.gif"
    frames[0].save(p, save_all=True, append_images=frames[1:], duration=100, loop=0)
    store = MediaStore()
    media_id = store.add(str(p))
    assert store.image(media_id).getpixel((5, 5))[0] > 200
    assert "3 frames; using the first" in store.info(media_id).notes[0]
    ans = make_agent([{"final": "ok", "evidence": []}], tools=[]).ask("q", [str(p)])
    assert ans.trace.steps[0].type == "note" and "first frame" in ans.trace.steps[0].message


@pytest.mark.parametrize(
    "source, fragment",
    [
        ("sample:nope", "unknown sample image 'sample:nope'; available: astronaut"),
        ("https://example.com/a.png", "remote URLs are off"),
        (np.zeros((4,), np.uint8), "is not an image"),
        (np.full((4, 4), np.nan), "NaN"),
        (12, "unsupported media input of type int"),
    ],
)
def test_bad_sources(store, source, fragment):
    with pytest.raises(MediaError) as exc:
        store.add(source)
    assert fragment in one_line(exc)


def test_arrays_of_many_dtypes(store):
    for arr in (np.ones((3, 4), bool), np.full((3, 4), 0.5), np.zeros((3, 4, 4), np.uint8), np.zeros((3, 4, 1), np.uint16)):
        assert store.image(store.add(arr)).size == (4, 3)


def test_unknown_ids_and_kind_mismatch(store):
    store.add("sample:coins")
    with pytest.raises(MediaError, match="unknown media id 'img_3'; available: img_0"):
        store.image("img_3")
    with pytest.raises(MediaError, match="is an image, not a video"):
        store.video_path("img_0")
