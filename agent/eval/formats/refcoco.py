"""RefCOCO, RefCOCO+ and RefCOCOg (``refcoco``, ``refcoco+``, ``refcocog``): locate the object a
referring expression describes; correct when the IoU of the cited region's box with the ground
truth is at least 0.5 (``accuracy``; ``iou`` is the mean IoU).

Two distributions are read:

- the original one (the ``refer`` toolkit's): ``refs(unc).p`` (RefCOCO, RefCOCO+) or
  ``refs(umd).p`` / ``refs(google).p`` (RefCOCOg), with ``instances.json`` (COCO format: images,
  annotations with ``bbox`` [x, y, w, h], categories) and the COCO train2014 images in ``images/``
  (or ``train2014/``, or the toolkit's ``../images/mscoco/images/train2014``). The pickle is read
  with an unpickler that builds only plain containers, strings and numbers: a pickle naming any
  class or function is refused, so it cannot run code. ``refs(...).json`` (the same list as JSON)
  is read too. One item per sentence (id: its ``sent_id``), for every split but ``train``;
- the Hugging Face ``lmms-lab/RefCOCO`` (``RefCOCOplus``, ``RefCOCOg``) parquet conversions:
  ``data/<split>-*.parquet`` with ``question_id``, ``image`` {bytes, path}, ``answer`` (the
  referring expressions), ``bbox`` [x, y, w, h], ``file_name``. One item per expression (id:
  ``<question_id>#<k>``).

Question: ``Locate "<expression>". Cite the region.``. Category: the split (val, testA, testB,
test); group ``object``: the COCO category name where known.

Results: ``[{"question_id": str | int, "box": [x0, y0, x1, y1]}]`` in pixels of the original
image (a missing or null ``box`` scores 0).
"""

from __future__ import annotations

import io
import math
import pickle
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
    read_json,
    read_jsonl_or_json,
    records,
    write_json,
)
from visagent.eval.formats.counting import PARQUET_PATTERNS, parquet_split
from visagent.eval.metrics import box_iou, xywh_to_xyxy

MAX_PICKLE_BYTES = 2_000_000_000


class _PlainUnpickler(pickle.Unpickler):
    """Builds dicts, lists, tuples, sets, strings, bytes and numbers only; any global is refused."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refusing {module}.{name}: only plain data is read")


def load_plain_pickle(path: Path, what: str) -> Any:
    """A pickle of plain data (see ``_PlainUnpickler``), or a one-line ``UsageError``."""
    try:
        size = path.stat().st_size
        if size > MAX_PICKLE_BYTES:
            raise UsageError(f"{what} {path} is {size / 1e9:.1f} GB, over the {MAX_PICKLE_BYTES / 1e9:.0f} GB limit")
        data = path.read_bytes()
        return _PlainUnpickler(io.BytesIO(data), encoding="utf-8", errors="replace").load()
    except UsageError:
        raise
    except OSError as exc:
        raise UsageError(f"{what} {path} cannot be read: {exc}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as exc:
        raise UsageError(f"{what} {path} is not a plain-data pickle ({exc})") from None


def refexp_question(expression: str) -> str:
    """The question an agent is asked for a referring expression."""
    return f'Locate "{expression.strip()}". Cite the region.'


class _RefCOCO(Adapter):
    task: ClassVar[str] = "grounding"
    metrics: ClassVar[tuple[str, ...]] = ("accuracy", "iou")
    refs_names: ClassVar[tuple[str, ...]] = ("refs(unc).p",)
    threshold: ClassVar[float] = 0.5

    # -- loading -------------------------------------------------------------------------------

    def load(self, folder: Path, limit: int | None = None) -> list[EvalItem]:
        what = self.name
        path = Path(folder).expanduser()
        root = dataset_root(path)
        if path.is_file() and path.suffix == ".parquet":
            return self._load_parquet([path], root, limit)
        refs = None
        if path.is_file():
            refs = path
        else:
            names = [*self.refs_names, *(n.rsplit(".", 1)[0] + ".json" for n in self.refs_names)]
            refs = next((root / n for n in names if (root / n).is_file()), None)
        if refs is not None:
            return self._load_refs(refs, root, limit)
        shards = sorted({p for pattern in PARQUET_PATTERNS for p in root.glob(pattern) if parquet_split(p)})
        if shards:
            return self._load_parquet(shards, root, limit)
        raise UsageError(f"{what}: no {' / '.join(self.refs_names)} (with instances.json) and no parquet files in {root}")

    def _image_dir(self, root: Path) -> Path:
        for d in (root / "images", root / "train2014", root / "images" / "train2014", root.parent / "images" / "mscoco" / "images" / "train2014"):
            if d.is_dir():
                return d
        return root / "images"

    def _load_refs(self, refs_path: Path, root: Path, limit: int | None) -> list[EvalItem]:
        what = self.name
        if refs_path.suffix in (".json", ".jsonl"):
            refs = read_jsonl_or_json(refs_path, f"{what} refs")
        else:
            refs = load_plain_pickle(refs_path, f"{what} refs")
        refs = records(refs, f"{what} refs", refs_path)
        inst_path = root / "instances.json"
        if not inst_path.is_file():
            raise UsageError(f"{what}: instances.json (the COCO boxes of the refs) is not in {root}")
        inst = read_json(inst_path, f"{what} instances")
        where = f"{what} {inst_path.name}"
        images = {int(need(im, "id", where)): im for im in records(need(inst, "images", where), where, inst_path)}
        anns = {int(need(a, "id", where)): a for a in records(need(inst, "annotations", where), where, inst_path)}
        cats = {int(c["id"]): str(c.get("name", c["id"])) for c in inst.get("categories", []) if isinstance(c, dict) and "id" in c}
        image_dir = self._image_dir(root)
        items: list[EvalItem] = []
        for i, ref in enumerate(refs):
            rwhere = f"{what} {refs_path.name} ref {i}"
            split = str(need(ref, "split", rwhere))
            if split == "train":
                continue
            ann_id = int(need(ref, "ann_id", rwhere))
            ann = anns.get(ann_id)
            if ann is None:
                raise UsageError(f"{rwhere}: annotation {ann_id} is not in instances.json")
            image_id = int(need(ref, "image_id", rwhere))
            image = images.get(image_id)
            if image is None:
                raise UsageError(f"{rwhere}: image {image_id} is not in instances.json")
            box = xywh_to_xyxy(need(ann, "bbox", f"{where} annotation {ann_id}"))
            category = cats.get(int(ref.get("category_id", ann.get("category_id", -1))))
            for s in need(ref, "sentences", rwhere):
                if limit is not None and len(items) >= limit:
                    return items
                text = str(s.get("sent") or s.get("raw") or "") if isinstance(s, dict) else str(s)
                sid = id_str(s.get("sent_id")) if isinstance(s, dict) and s.get("sent_id") is not None else f"{ref.get('ref_id', i)}#{len(items)}"
                items.append(
                    EvalItem(
                        id=sid,
                        media=[media_path(image_dir, need(image, "file_name", f"{where} image {image_id}"), rwhere)],
                        question=refexp_question(text),
                        task="grounding",
                        answers=[text],
                        box=box,
                        category=split,
                        extra={"expression": text, "ref_id": ref.get("ref_id"), "ann_id": ann_id, "image_id": image_id,
                               "groups": {"object": category}},
                    )
                )  # fmt: skip
        return items

    def _load_parquet(self, shards: list[Path], root: Path, limit: int | None) -> list[EvalItem]:
        what = self.name
        items: list[EvalItem] = []
        for shard in shards:
            split = parquet_split(shard) or "?"
            if split == "train":
                continue
            for r, row in enumerate(iter_parquet([shard], what, ["question_id", "image", "answer", "bbox"])):
                where = f"{what} {shard.name} row {r}"
                bbox = row["bbox"]
                if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
                    raise UsageError(f"{where}: 'bbox' is not [x, y, w, h]")
                expressions = row["answer"] if isinstance(row["answer"], (list, tuple)) else [row["answer"]]
                media = None
                for k, text in enumerate(expressions):
                    if limit is not None and len(items) >= limit:
                        return items
                    media = media or image_file(row["image"], root, where)
                    items.append(
                        EvalItem(
                            id=f"{id_str(row['question_id'])}#{k}",
                            media=[media],
                            question=refexp_question(str(text)),
                            task="grounding",
                            answers=[str(text)],
                            box=xywh_to_xyxy(bbox),
                            category=split,
                            extra={"expression": str(text), "file_name": row.get("file_name"), "question_id": id_str(row["question_id"])},
                        )
                    )
        return items

    # -- results -------------------------------------------------------------------------------

    def read_predictions(self, path: Path) -> list[Prediction]:
        what = f"{self.name} results"
        out = []
        for i, rec in enumerate(records(read_jsonl_or_json(path, what), what, path)):
            where = f"{what} {path} entry {i}"
            box = need(rec, "box", where)
            if box is not None:
                if (
                    not isinstance(box, (list, tuple)) or len(box) != 4
                    or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in box)
                ):  # fmt: skip
                    raise UsageError(f"{where}: 'box' must be [x0, y0, x1, y1] numbers or null")
                box = [float(v) for v in box]
            answer = rec.get("answer")
            out.append(Prediction(id=id_str(need(rec, "question_id", where)), box=box, answer=None if answer is None else str(answer)))
        return out

    def write_predictions(self, predictions: list[Prediction], path: Path) -> None:
        write_json([{"question_id": id_out(p.id), "box": p.box} for p in predictions], path)

    def score(self, item: EvalItem, prediction: Prediction | None) -> dict[str, float]:
        iou = box_iou(prediction.box if prediction else None, item.box)
        return {"accuracy": 1.0 if iou >= self.threshold else 0.0, "iou": iou}


@register_format
class RefCOCO(_RefCOCO):
    name: ClassVar[str] = "refcoco"
    description: ClassVar[str] = "RefCOCO refs(unc).p + instances.json, or lmms-lab parquet; accuracy @ IoU 0.5"


@register_format
class RefCOCOPlus(_RefCOCO):
    name: ClassVar[str] = "refcoco+"
    description: ClassVar[str] = "RefCOCO+ refs(unc).p + instances.json, or lmms-lab parquet; accuracy @ IoU 0.5"


@register_format
class RefCOCOg(_RefCOCO):
    name: ClassVar[str] = "refcocog"
    description: ClassVar[str] = "RefCOCOg refs(umd).p + instances.json, or lmms-lab parquet; accuracy @ IoU 0.5"
    refs_names: ClassVar[tuple[str, ...]] = ("refs(umd).p", "refs(google).p")


