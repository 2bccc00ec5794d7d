"""GTA (``gta``, open-compass/GTA): real-world queries that need tools, scored by answer accuracy.

Reads ``dataset.json``: ``{id: {"tools": [{"name", ...}], "files": [{"type", "path", "url"}],
"dialogs": [{"role": "user", "content"}, {"role": "assistant", "tool_calls": [...]}, {"role":
"tool", ...}, ..., {"role": "assistant", "content"}], "gt_answer": {"whitelist": [[...]],
"blacklist": [[...]] | null} | [...] | null}}`` with the files (images) under ``image/`` (paths in
``files`` are relative to the folder). The question is the first user turn.

Answer accuracy (``accuracy``) follows GTA's evaluator: every whitelist group must have one of its
phrases in the answer (whole words, case-insensitive) and no blacklist phrase may be. Queries
whose ``gt_answer`` is null (image-generation queries, which the official answer accuracy
leaves out too) or a list of free-form references (scored by a sentence-embedding similarity
this evaluation does not compute) are not loaded; the count is logged.

Results: ``[{"id": str, "answer": str}]`` (the keys of ``dataset.json``). Category: none; the
tools of the reference tool chain are kept in ``extra["gt_tools"]``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, ClassVar

from visagent.errors import UsageError
from visagent.eval.base import Adapter, EvalItem, Prediction, register_format
from visagent.eval.formats.common import dataset_root, media_path, need, read_answer_list, read_json, write_answer_list
from visagent.eval.metrics import gta_correct

log = logging.getLogger("visagent.eval")


def _groups(value: Any, where: str, key: str) -> list[list[str]]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(g, list) for g in value):
        raise UsageError(f"{where}: {key!r} must be a list of lists of phrases")
    return [[str(p) for p in g] for g in value]


@register_format
class GTA(Adapter):
    name: ClassVar[str] = "gta"
    task: ClassVar[str] = "tool"
    metrics: ClassVar[tuple[str, ...]] = ("accuracy",)
    description: ClassVar[str] = "GTA dataset.json + image/; answer accuracy with whitelist / blacklist"

    def load(self, folder: Path, limit: int | None = None) -> list[EvalItem]:
        what = "GTA"
        path = Path(folder).expanduser()
        root = dataset_root(path)
        data_file = path if path.is_file() else root / "dataset.json"
        if not data_file.is_file():
            raise UsageError(f"{what}: dataset.json is not in {root}")
        data = read_json(data_file, what)
        if not isinstance(data, dict):
            raise UsageError(f"{what} {data_file}: expected an object of queries by id, got {type(data).__name__}")
        items: list[EvalItem] = []
        skipped = 0
        for qid, q in data.items():
            if limit is not None and len(items) >= limit:
                break
            where = f"{what} {data_file.name} query {qid}"
            if not isinstance(q, dict):
                raise UsageError(f"{where}: expected an object")
            gt = need(q, "gt_answer", where)
            if not isinstance(gt, dict):
                skipped += 1
                continue
            whitelist = _groups(need(gt, "whitelist", f"{where} gt_answer"), where, "whitelist")
            blacklist = _groups(gt.get("blacklist"), where, "blacklist")
            dialogs = need(q, "dialogs", where)
            question = next((d.get("content") for d in dialogs if isinstance(d, dict) and d.get("role") == "user"), None)
            if not question:
                raise UsageError(f"{where}: no user turn in 'dialogs'")
            media = [
                media_path(root, need(f, "path", f"{where} file"), where)
                for f in need(q, "files", where)
                if isinstance(f, dict) and str(f.get("type", "image")) == "image"
            ]
            gt_tools = [
                d["tool_calls"][0]["function"]["name"]
                for d in dialogs
                if isinstance(d, dict) and d.get("tool_calls") and isinstance(d["tool_calls"][0], dict)
                and isinstance(d["tool_calls"][0].get("function"), dict) and "name" in d["tool_calls"][0]["function"]
            ]  # fmt: skip
            items.append(
                EvalItem(
                    id=str(qid),
                    media=media,
                    question=str(question),
                    task="tool",
                    answers=[g[0] for g in whitelist if g],
                    extra={
                        "whitelist": whitelist,
                        "blacklist": blacklist,
                        "tools": [t.get("name") for t in q.get("tools", []) if isinstance(t, dict)],
                        "gt_tools": gt_tools,
                    },
                )
            )
        if skipped:
            log.info("GTA: %d queries without a whitelist answer (image generation, free-form references) not loaded", skipped)
        return items

    def read_predictions(self, path: Path) -> list[Prediction]:
        return read_answer_list(path, "GTA results", id_key="id")

    def write_predictions(self, predictions: list[Prediction], path: Path) -> None:
        write_answer_list(predictions, path, id_key="id", int_ids=False)

    def score(self, item: EvalItem, prediction: Prediction | None) -> dict[str, float]:
        text = prediction.answer if prediction else None
        return {"accuracy": gta_correct(text, item.extra.get("whitelist", []), item.extra.get("blacklist", []))}
