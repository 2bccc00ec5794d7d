"""Counting benchmarks: CountBenchQA, PixMo-Count, TallyQA. Metrics: ``exact`` (the headline),
``within1`` (off by at most one) and ``abs_error`` (its mean is the MAE).

- ``countbenchqa``: the Hugging Face ``vikhyatk/CountBenchQA`` parquet (``data/test-*.parquet``,
  columns ``image`` {bytes, path}, ``text``, ``question``, ``number``); images are embedded (kept
  under ``$VISAGENT_CACHE_DIR/eval-images``). Item id: the row number (0-based). Category: the
  true count.
- ``pixmo-count``: the Hugging Face ``allenai/pixmo-count`` parquet (``data/<split>-*.parquet``,
  ``validation`` preferred, then ``test``, ``train``; columns ``image_url``, ``image_sha256``,
  ``count``, ``label``). The images are not in the distribution: put each one in ``images/`` named
  by its ``image_sha256`` (``images/<image_sha256>.jpg``, any image extension) or, failing that,
  by the last part of its URL. Question: ``How many <label> are in the image?``. Item id: the row
  number in the split. Category: the true count.
- ``tallyqa``: ``test.json`` (preferred) / ``train.json``, lists of ``{"image", "answer",
  "question", "question_id", "image_id", "data_source", "issimple"}``; ``image`` is relative to
  the folder (e.g. ``VG_100K_2/2404.jpg``, or under ``images/``). Category: simple / complex.

Results (all three): ``[{"question_id": int, "answer": number | str}]``; a text answer is read
for its first number (digits or a number word), as the agent's count check reads one.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, ClassVar

from visagent.errors import UsageError
from visagent.eval.base import Adapter, EvalItem, Prediction, register_format
from visagent.eval.formats.common import (
    dataset_root,
    id_out,
    id_str,
    image_file,
    iter_parquet,
    media_path,
    need,
    pick_split,
    read_json,
    read_jsonl_or_json,
    records,
    write_json,
)
from visagent.eval.metrics import count_scores
from visagent.grounding import answer_number

_CONVERTED = re.compile(r"^\d{4}\.parquet$")
_SHARD = re.compile(r"^([A-Za-z0-9_.+]+?)(?:-\d{5}-of-\d{5})?\.parquet$")
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp")


PARQUET_PATTERNS = ("*.parquet", "data/*.parquet", "*/*/*.parquet")


def parquet_split(path: Path) -> str | None:
    """The split of a Hugging Face parquet file: from its name (``data/test-00000-of-00001.parquet``
    -> ``test``), or from its folder for the Hub's converted layout (``default/val/0000.parquet``
    -> ``val``)."""
    if _CONVERTED.match(path.name):
        return path.parent.name
    m = _SHARD.match(path.name)
    return m.group(1) if m else None


def _as_int(value: Any, where: str) -> int:
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise UsageError(f"{where}: the count {value!r} is not a number") from None
    if not math.isfinite(f) or not f.is_integer():
        raise UsageError(f"{where}: the count {value!r} is not a whole number")
    return int(f)


class _Counting(Adapter):
    """The counting results format and metrics."""

    task: ClassVar[str] = "count"
    metrics: ClassVar[tuple[str, ...]] = ("exact", "within1", "abs_error")

    def read_predictions(self, path: Path) -> list[Prediction]:
        what = f"{self.name} results"
        out = []
        for i, rec in enumerate(records(read_jsonl_or_json(path, what), what, path)):
            where = f"{what} {path} entry {i}"
            pid = id_str(need(rec, "question_id", where))
            answer = need(rec, "answer", where)
            if answer is None:
                out.append(Prediction(id=pid))
            elif isinstance(answer, bool) or not isinstance(answer, (int, float, str)):
                raise UsageError(f"{where}: 'answer' must be a number or a string")
            elif isinstance(answer, str):
                out.append(Prediction(id=pid, answer=answer, count=answer_number(answer)))
            else:
                out.append(Prediction(id=pid, answer=str(answer), count=float(answer)))
        return out

    def write_predictions(self, predictions: list[Prediction], path: Path) -> None:
        rows = []
        for p in predictions:
            if p.count is not None and math.isfinite(p.count):
                value: Any = int(p.count) if float(p.count).is_integer() else p.count
            else:
                value = p.answer
            rows.append({"question_id": id_out(p.id), "answer": value})
        write_json(rows, path)

    def score(self, item: EvalItem, prediction: Prediction | None) -> dict[str, float]:
        return count_scores(prediction.count if prediction else None, int(item.count or 0))


def _parquet_files(folder: Path, what: str, preferred: tuple[str, ...]) -> tuple[str, list[Path]]:
    return pick_split(folder, PARQUET_PATTERNS, parquet_split, preferred, what, expected="parquet files")


@register_format
class CountBenchQA(_Counting):
    name: ClassVar[str] = "countbenchqa"
    description: ClassVar[str] = "CountBenchQA parquet (vikhyatk/CountBenchQA); exact / within 1 / MAE"

    def load(self, folder: Path, limit: int | None = None) -> list[EvalItem]:
        what = "CountBenchQA"
        split, files = _parquet_files(folder, what, ("test",))
        root = dataset_root(files[0])
        items = []
        for i, row in enumerate(iter_parquet(files, what, ["image", "question", "number"])):
            if limit is not None and len(items) >= limit:
                break
            where = f"{what} row {i}"
            count = _as_int(row["number"], where)
            items.append(
                EvalItem(
                    id=str(i),
                    media=[image_file(row["image"], root, where)],
                    question=str(row["question"]),
                    task="count",
                    answers=[str(count)],
                    count=count,
                    category=str(count),
                    extra={"text": row.get("text"), "split": split},
                )
            )
        return items


@register_format
class PixMoCount(_Counting):
    name: ClassVar[str] = "pixmo-count"
    description: ClassVar[str] = "PixMo-Count parquet (allenai/pixmo-count) + images/<sha256>.jpg; exact / within 1 / MAE"

    def load(self, folder: Path, limit: int | None = None) -> list[EvalItem]:
        what = "PixMo-Count"
        split, files = _parquet_files(folder, what, ("validation", "test", "train"))
        root = dataset_root(files[0])
        if root.name == "data" and not (root / "images").is_dir():
            root = root.parent
        image_dir = root / "images"
        local: dict[str, Path] = {}
        if image_dir.is_dir():
            for p in image_dir.iterdir():
                if p.suffix.lower() in _IMAGE_SUFFIXES:
                    local.setdefault(p.stem, p)
                    local.setdefault(p.name, p)
        items = []
        for i, row in enumerate(iter_parquet(files, what, ["image_url", "image_sha256", "count", "label"])):
            if limit is not None and len(items) >= limit:
                break
            where = f"{what} {split} row {i}"
            sha = str(row["image_sha256"] or "")
            url_name = str(row["image_url"] or "").rstrip("/").rsplit("/", 1)[-1].split("?", 1)[0]
            found = local.get(sha) or local.get(url_name) or local.get(Path(url_name).stem)
            path = str(found) if found else media_path(image_dir, f"{sha}.jpg", where)
            count = _as_int(row["count"], where)
            label = str(row["label"])
            items.append(
                EvalItem(
                    id=str(i),
                    media=[path],
                    question=f"How many {label} are in the image?",
                    task="count",
                    answers=[str(count)],
                    count=count,
                    category=str(count),
                    extra={"label": label, "image_url": row["image_url"], "image_sha256": sha, "split": split},
                )
            )
        return items


@register_format
class TallyQA(_Counting):
    name: ClassVar[str] = "tallyqa"
    description: ClassVar[str] = "TallyQA test.json / train.json + Visual Genome / COCO images; exact / within 1 / MAE"

    def load(self, folder: Path, limit: int | None = None) -> list[EvalItem]:
        what = "TallyQA"
        split, files = pick_split(
            folder, ["test.json", "train.json"], lambda p: p.stem if p.name in ("test.json", "train.json") else None,
            ("test", "train"), what, expected="test.json or train.json",
        )  # fmt: skip
        path = files[0]
        root = dataset_root(path)
        data = records(read_json(path, what), what, path)
        image_root = root / "images" if (root / "images").is_dir() else root
        items = []
        for i, rec in enumerate(data):
            if limit is not None and len(items) >= limit:
                break
            where = f"{what} {path.name} entry {i}"
            count = _as_int(need(rec, "answer", where), where)
            simple = need(rec, "issimple", where)
            image = str(need(rec, "image", where))
            items.append(
                EvalItem(
                    id=id_str(need(rec, "question_id", where)),
                    media=[media_path(image_root, image, where)],
                    question=str(need(rec, "question", where)),
                    task="count",
                    answers=[str(count)],
                    count=count,
                    category="simple" if simple else "complex",
                    extra={"image": image, "image_id": rec.get("image_id"), "data_source": rec.get("data_source"), "split": split},
                )
            )
        return items
