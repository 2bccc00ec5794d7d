"""VQAv2 and TextVQA: open-ended questions with 10 annotator answers, scored by VQA accuracy.

VQAv2 (``vqav2``) reads, for one split (``val2014`` preferred, then ``train2014``)::

    v2_OpenEnded_mscoco_<split>_questions.json   {"questions": [{"image_id", "question", "question_id"}]}
    v2_mscoco_<split>_annotations.json           {"annotations": [{"question_id", "image_id", "answers":
                                                  [{"answer", "answer_confidence", "answer_id"}] x10,
                                                  "multiple_choice_answer", "answer_type", "question_type"}]}
    <split>/COCO_<split>_<image_id:012d>.jpg     (or images/<split>/...)

Results: ``[{"question_id": int, "answer": str}]``. Category: ``answer_type`` (yes/no, number,
other); ``question_type`` is a further group.

TextVQA (``textvqa``) reads ``TextVQA_0.5.1_<split>.json`` (``val`` preferred) with
``{"dataset_name", "dataset_version", "dataset_type", "data": [{"question_id", "question",
"image_id", "answers" (10 strings), "image_classes", ...}]}`` and images
``train_images/<image_id>.jpg`` (train and val) or ``test_images/<image_id>.jpg``. Results:
``[{"question_id", "answer"}]``. No categories.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import ClassVar

from visagent.errors import UsageError
from visagent.eval.base import Adapter, EvalItem, Prediction, register_format
from visagent.eval.formats.common import (
    dataset_root,
    id_str,
    media_path,
    need,
    pick_split,
    read_answer_list,
    read_json,
    records,
    write_answer_list,
)
from visagent.eval.metrics import vqa_accuracy

_VQA_Q = re.compile(r"^v2_OpenEnded_mscoco_(.+)_questions\.json$")
_TEXTVQA = re.compile(r"^TextVQA_0\.5\.1_(.+)\.json$")


class _VQAResults(Adapter):
    """The ``[{"question_id", "answer"}]`` results format and VQA accuracy."""

    task: ClassVar[str] = "vqa"
    metrics: ClassVar[tuple[str, ...]] = ("accuracy",)

    def read_predictions(self, path: Path) -> list[Prediction]:
        return read_answer_list(path, f"{self.name} results")

    def write_predictions(self, predictions: list[Prediction], path: Path) -> None:
        write_answer_list(predictions, path)

    def score(self, item: EvalItem, prediction: Prediction | None) -> dict[str, float]:
        return {"accuracy": vqa_accuracy(prediction.answer if prediction else None, item.answers)}


@register_format
class VQAv2(_VQAResults):
    name: ClassVar[str] = "vqav2"
    description: ClassVar[str] = "VQAv2 (questions + annotations JSON, COCO images); VQA accuracy"
    preferred: ClassVar[tuple[str, ...]] = ("val2014", "train2014")

    def load(self, folder: Path, limit: int | None = None) -> list[EvalItem]:
        what = "VQAv2"
        split, files = pick_split(
            folder, ["v2_OpenEnded_mscoco_*_questions.json"], lambda p: (m := _VQA_Q.match(p.name)) and m.group(1),
            self.preferred, what, expected="v2_OpenEnded_mscoco_<split>_questions.json",
        )  # fmt: skip
        qfile = files[0]
        root = qfile.parent
        afile = root / f"v2_mscoco_{split}_annotations.json"
        if not afile.is_file():
            raise UsageError(f"{what}: {afile.name} is not in {root} (answers of the {split} split are needed to score it)")
        questions = records(need(read_json(qfile, f"{what} questions"), "questions", f"{what} {qfile.name}"), what, qfile)
        anns = records(need(read_json(afile, f"{what} annotations"), "annotations", f"{what} {afile.name}"), what, afile)
        by_qid = {id_str(need(a, "question_id", f"{what} {afile.name}")): a for a in anns}
        image_dir = next((d for d in (root / split, root / "images" / split) if d.is_dir()), root / split)
        items = []
        for i, q in enumerate(questions):
            if limit is not None and len(items) >= limit:
                break
            where = f"{what} {qfile.name} question {i}"
            qid = id_str(need(q, "question_id", where))
            ann = by_qid.get(qid)
            if ann is None:
                raise UsageError(f"{what}: question {qid} has no annotation in {afile.name}")
            image_id = int(need(q, "image_id", where))
            answers = [str(need(a, "answer", f"{what} annotation {qid}")) for a in need(ann, "answers", f"{what} annotation {qid}")]
            items.append(
                EvalItem(
                    id=qid,
                    media=[str(image_dir / f"COCO_{split}_{image_id:012d}.jpg")],
                    question=str(need(q, "question", where)),
                    task="vqa",
                    answers=answers,
                    category=ann.get("answer_type"),
                    extra={
                        "image_id": image_id,
                        "split": split,
                        "multiple_choice_answer": ann.get("multiple_choice_answer"),
                        "groups": {"question_type": ann.get("question_type")},
                    },
                )
            )
        return items


@register_format
class TextVQA(_VQAResults):
    name: ClassVar[str] = "textvqa"
    description: ClassVar[str] = "TextVQA 0.5.1 (one JSON, train_images/); VQA accuracy"
    preferred: ClassVar[tuple[str, ...]] = ("val", "test", "train")

    def load(self, folder: Path, limit: int | None = None) -> list[EvalItem]:
        what = "TextVQA"
        split, files = pick_split(
            folder, ["TextVQA_0.5.1_*.json"], lambda p: (m := _TEXTVQA.match(p.name)) and m.group(1),
            self.preferred, what, expected="TextVQA_0.5.1_<split>.json",
        )  # fmt: skip
        path = files[0]
        root = dataset_root(path)
        data = records(need(read_json(path, what), "data", f"{what} {path.name}"), what, path)
        image_dir = root / ("test_images" if split == "test" else "train_images")
        items = []
        for i, rec in enumerate(data):
            if limit is not None and len(items) >= limit:
                break
            where = f"{what} {path.name} entry {i}"
            answers = rec.get("answers")
            if answers is None:
                raise UsageError(f"{what}: {path.name} has no answers (the {split} split is scored on the evaluation server)")
            image_id = str(need(rec, "image_id", where))
            items.append(
                EvalItem(
                    id=id_str(need(rec, "question_id", where)),
                    media=[media_path(image_dir, f"{image_id}.jpg", where)],
                    question=str(need(rec, "question", where)),
                    task="vqa",
                    answers=[str(a) for a in answers],
                    extra={"image_id": image_id, "split": split, "image_classes": rec.get("image_classes") or []},
                )
            )
        return items
