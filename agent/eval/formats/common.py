"""What the format adapters share: finding the split's files, reading JSON / parquet with one-line
errors, keeping embedded images as files, and the ``[{"question_id", "answer"}]`` results format.

Choosing a split: DATASET is either the folder as distributed or one of its files. When the folder
holds several splits (e.g. GQA's train / val / testdev question files), the first of the format's
``preferred`` splits that is there is used, and the choice is logged; pass the file itself to
choose another.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from visagent.errors import UsageError
from visagent.eval.base import Prediction

log = logging.getLogger("visagent.eval")


def dataset_root(path: Path) -> Path:
    """The dataset folder of ``path`` (``path`` itself, or the folder of a file); a one-line
    ``UsageError`` when it does not exist."""
    path = Path(path).expanduser()
    if path.is_file():
        return path.parent.resolve()
    if not path.is_dir():
        raise UsageError(f"dataset folder {path} does not exist")
    return path.resolve()


def pick_split(
    path: Path,
    patterns: Sequence[str],
    split_of: Callable[[Path], str | None],
    preferred: Sequence[str],
    what: str,
    *,
    expected: str,
) -> tuple[str, list[Path]]:
    """``(split, files)``: the files of one split. ``path`` is a folder (searched with the glob
    ``patterns``, recursively for ``**``) or one file (its split's other shards next to it are taken
    too). ``split_of(file)`` names a file's split (None: not a file of this format). Several splits:
    the first of ``preferred`` found, else the first by name. None found: a ``UsageError`` naming
    ``expected``."""
    path = Path(path).expanduser()
    if path.is_file():
        split = split_of(path)
        if split is None:
            raise UsageError(f"{what}: {path.name} is not a {expected} file")
        siblings = [p for p in sorted(path.parent.iterdir()) if p.is_file() and split_of(p) == split and p.suffix == path.suffix]
        return split, siblings or [path]
    root = dataset_root(path)
    by_split: dict[str, list[Path]] = {}
    for pattern in patterns:
        for hit in sorted(root.glob(pattern)):
            split = split_of(hit) if hit.is_file() else None
            if split is not None and hit not in by_split.get(split, []):
                by_split.setdefault(split, []).append(hit)
    if not by_split:
        raise UsageError(f"{what}: no {expected} in {root}")
    choice = next((s for s in preferred if s in by_split), None) or min(by_split)
    if len(by_split) > 1:
        log.info("%s: using split %r of %s (pass a file to choose another)", what, choice, ", ".join(sorted(by_split)))
    return choice, by_split[choice]


def media_path(base: Path, relative: Any, what: str) -> str:
    """``base / relative`` as an absolute path, refused (one-line ``UsageError``) when the dataset's
    ``relative`` is absolute or climbs out of ``base`` with ``..``: a dataset file names images
    inside its own folder only. Checked on the path as written, so folders linked in stay usable."""
    rel = str(relative)
    joined = os.path.normpath(os.path.join(str(base), rel))
    if not rel or os.path.isabs(rel) or not (joined == str(base) or joined.startswith(str(base).rstrip(os.sep) + os.sep)):
        raise UsageError(f"{what}: the image path {rel!r} points outside {base}")
    return joined


def read_json(path: Path, what: str) -> Any:
    """A JSON file; a missing / unreadable / invalid one is a one-line ``UsageError`` naming it."""
    path = Path(path)
    try:
        with path.open("rb") as fh:
            return json.load(fh)
    except FileNotFoundError:
        raise UsageError(f"{what} {path} does not exist") from None
    except IsADirectoryError:
        raise UsageError(f"{what} {path} is a folder, not a file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{what} {path} cannot be read: {exc}") from None
    except json.JSONDecodeError as exc:
        raise UsageError(f"{what} {path} is not valid JSON (line {exc.lineno}: {exc.msg})") from None
    except RecursionError:
        raise UsageError(f"{what} {path} is nested too deeply") from None


def read_jsonl_or_json(path: Path, what: str) -> Any:
    """A ``.jsonl`` file (one JSON value a line, as a list) or a JSON file."""
    path = Path(path)
    if path.suffix != ".jsonl":
        return read_json(path, what)
    out = []
    try:
        with path.open(encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                if line.strip():
                    out.append(json.loads(line))
    except FileNotFoundError:
        raise UsageError(f"{what} {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{what} {path} cannot be read: {exc}") from None
    except json.JSONDecodeError as exc:
        raise UsageError(f"{what} {path} line {n} is not valid JSON ({exc.msg})") from None
    return out


def write_json(value: Any, path: Path) -> None:
    """Write ``value`` as JSON (parent folders made; written whole, then renamed into place)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(value, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, path)


def need(record: Any, key: str, where: str) -> Any:
    """``record[key]``, or a one-line ``UsageError`` naming the missing field and where."""
    if not isinstance(record, dict):
        raise UsageError(f"{where}: expected an object, got {type(record).__name__}")
    if key not in record:
        raise UsageError(f"{where}: missing field {key!r}")
    return record[key]


def records(value: Any, what: str, path: Path) -> list[dict[str, Any]]:
    """``value`` as a list of objects, or a one-line ``UsageError``."""
    if not isinstance(value, list):
        raise UsageError(f"{what} {path}: expected a JSON list, got {type(value).__name__}")
    for i, rec in enumerate(value):
        if not isinstance(rec, dict):
            raise UsageError(f"{what} {path}: entry {i} is not an object")
    return value


def take(values: Iterable[Any], limit: int | None) -> list[Any]:
    """The first ``limit`` values (all when None)."""
    out = []
    for v in values:
        if limit is not None and len(out) >= limit:
            break
        out.append(v)
    return out


def id_str(value: Any) -> str:
    """A benchmark id as a string (``123`` -> ``"123"``, ``12.0`` -> ``"12"``)."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value)


def id_out(value: str) -> int | str:
    """An id as the benchmark writes it: an integer when it is one, else the string."""
    return int(value) if re.fullmatch(r"-?\d{1,18}", value) else value


# -- parquet and embedded images -----------------------------------------------------------------


def iter_parquet(paths: Sequence[Path], what: str, columns: Sequence[str], batch_rows: int = 256) -> Iterator[dict[str, Any]]:
    """The rows of parquet files, read a batch at a time (so that ``limit`` items of a large file
    with embedded images read only what they need), as Python values; the ``columns`` must be
    there. Needs ``pyarrow`` (``pip install 'visagent[eval]'``)."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise UsageError(f"{what}: reading parquet needs pyarrow: pip install 'visagent[eval]'") from None
    for path in paths:
        try:
            pf = pq.ParquetFile(path)
            names = pf.schema_arrow.names
        except Exception as exc:  # noqa: BLE001 - pyarrow raises several kinds for a bad file
            raise UsageError(f"{what}: {path} is not a readable parquet file ({str(exc).splitlines()[0]})") from None
        absent = [c for c in columns if c not in names]
        if absent:
            raise UsageError(f"{what}: {path.name} has no column {absent[0]!r} (it has {', '.join(names)})")
        try:
            for batch in pf.iter_batches(batch_size=batch_rows):
                yield from batch.to_pylist()
        except OSError as exc:
            raise UsageError(f"{what}: {path} cannot be read ({str(exc).splitlines()[0]})") from None


def _cache_root() -> Path:
    return Path(os.environ.get("VISAGENT_CACHE_DIR") or "~/.cache/visagent").expanduser() / "eval-images"


def _suffix(data: bytes, name: str | None) -> str:
    if data[:3] == b"\xff\xd8\xff":
        return ".jpg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return ".png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ".webp"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return ".gif"
    suffix = Path(name or "").suffix.lower()
    return suffix if re.fullmatch(r"\.[a-z0-9]{1,5}", suffix) else ".img"


def image_file(value: Any, root: Path, what: str) -> str:
    """The absolute path of an image column's value: a Hugging Face image struct
    ``{"bytes", "path"}`` (the bytes are kept, by content hash, under
    ``$VISAGENT_CACHE_DIR/eval-images``), or a path relative to ``root``."""
    if isinstance(value, dict):
        data, name = value.get("bytes"), value.get("path")
        if data:
            digest = hashlib.sha256(data).hexdigest()
            target = _cache_root() / digest[:2] / f"{digest}{_suffix(data, name)}"
            if not target.is_file():
                target.parent.mkdir(parents=True, exist_ok=True)
                tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
                tmp.write_bytes(data)
                os.replace(tmp, target)
            return str(target)
        value = name
    if isinstance(value, str) and value:
        return media_path(root, value, what)
    raise UsageError(f"{what}: an image entry has neither bytes nor a path")


# -- the [{"question_id", "answer"}] results format ----------------------------------------------


def read_answer_list(path: Path, what: str, id_key: str = "question_id", answer_key: str = "answer") -> list[Prediction]:
    """``[{id_key, answer_key}]`` (JSON list or JSONL) -> predictions with text answers."""
    out = []
    for i, rec in enumerate(records(read_jsonl_or_json(path, what), what, path)):
        where = f"{what} {path} entry {i}"
        answer = need(rec, answer_key, where)
        if answer is not None and not isinstance(answer, (str, int, float)):
            raise UsageError(f"{where}: {answer_key!r} must be a string")
        out.append(Prediction(id=id_str(need(rec, id_key, where)), answer=None if answer is None else str(answer)))
    return out


def write_answer_list(
    predictions: Iterable[Prediction], path: Path, id_key: str = "question_id", answer_key: str = "answer", *, int_ids: bool = True
) -> None:
    """Predictions -> ``[{id_key, answer_key}]`` (ids as integers where they are, with ``int_ids``)."""
    write_json([{id_key: id_out(p.id) if int_ids else p.id, answer_key: p.answer or ""} for p in predictions], path)
