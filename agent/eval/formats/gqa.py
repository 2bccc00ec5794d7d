"""GQA (``gqa``): compositional questions on Visual Genome images, scored by exact match.

Reads ``<split>_balanced_questions.json`` (``testdev`` preferred, then ``val``, ``train``; an
``<split>_all_questions.json`` is read too, keeping its ``isBalanced`` questions, as the official
accuracy does) ``{questionId: {"imageId", "question", "answer", "fullAnswer", "types":
{"structural", "semantic", "detailed"}, "isBalanced", ...}}`` and images ``images/<imageId>.jpg``.

Results: ``[{"questionId": str, "prediction": str}]``, as the official evaluation script reads.
Metrics: ``accuracy`` is exact match after ``gqa_normalize`` (lowercase, trailing period dropped),
``exact`` the official raw string equality. Category: the structural type (verify, query,
choose, logical, compare); groups: the semantic type and binary / open (open = structural type
``query``, as the official script splits them).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import ClassVar

from visagent.errors import UsageError
from visagent.eval.base import Adapter, EvalItem, Prediction, register_format
from visagent.eval.formats.common import (
    dataset_root,
    media_path,
    need,
    pick_split,
    read_answer_list,
    read_json,
    write_answer_list,
)
from visagent.eval.metrics import gqa_exact, gqa_match

_GQA = re.compile(r"^(.+)_(balanced|all)_questions\.json$")


@register_format
class GQA(Adapter):
    name: ClassVar[str] = "gqa"
    task: ClassVar[str] = "vqa"
    metrics: ClassVar[tuple[str, ...]] = ("accuracy", "exact")
    description: ClassVar[str] = "GQA balanced questions JSON, images/; exact match"
    preferred: ClassVar[tuple[str, ...]] = ("testdev", "val", "test", "train")

    def load(self, folder: Path, limit: int | None = None) -> list[EvalItem]:
        what = "GQA"
        split, files = pick_split(
            folder, ["*_balanced_questions.json", "*_all_questions.json"],
            lambda p: (m := _GQA.match(p.name)) and m.group(1),
            self.preferred, what, expected="<split>_balanced_questions.json",
        )  # fmt: skip
        path = next((f for f in files if "_balanced_" in f.name), files[0])
        root = dataset_root(path)
        data = read_json(path, what)
        if not isinstance(data, dict):
            raise UsageError(f"{what} {path}: expected an object of questions by id, got {type(data).__name__}")
        items = []
        for qid, q in data.items():
            if limit is not None and len(items) >= limit:
                break
            where = f"{what} {path.name} question {qid}"
            if not isinstance(q, dict):
                raise UsageError(f"{where}: expected an object")
            if q.get("isBalanced") is False:
                continue
            if "answer" not in q:
                raise UsageError(f"{where}: missing field 'answer' (the {split} split is scored on the evaluation server)")
            types = q.get("types") or {}
            structural = types.get("structural")
            items.append(
                EvalItem(
                    id=str(qid),
                    media=[media_path(root / "images", f"{need(q, 'imageId', where)}.jpg", where)],
                    question=str(need(q, "question", where)),
                    task="vqa",
                    answers=[str(q["answer"])],
                    category=structural,
                    extra={
                        "image_id": str(q["imageId"]),
                        "split": split,
                        "full_answer": q.get("fullAnswer"),
                        "groups": {
                            "semantic": types.get("semantic"),
                            "answer_type": None if structural is None else ("open" if structural == "query" else "binary"),
                        },
                    },
                )
            )
        return items

    def read_predictions(self, path: Path) -> list[Prediction]:
        return read_answer_list(path, "GQA results", id_key="questionId", answer_key="prediction")

    def write_predictions(self, predictions: list[Prediction], path: Path) -> None:
        write_answer_list(predictions, path, "questionId", "prediction", int_ids=False)

    def score(self, item: EvalItem, prediction: Prediction | None) -> dict[str, float]:
        text = prediction.answer if prediction else None
        gold = item.answers[0] if item.answers else ""
        return {"accuracy": gqa_match(text, gold), "exact": gqa_exact(text, gold)}
