"""Score a predictions file in a benchmark's own results format against the dataset, without
running any model (what each benchmark's official evaluator does).

``score_predictions(folder, fmt, predictions)`` -> ``summarize(...)`` plus ``"format"``,
``"task"``, ``"dataset"``, ``"predictions"`` (the file), ``"extra_predictions"`` (predictions whose id is not
among the items scored), ``"duplicates"`` (ids predicted more than once: the last one counts) and
``"items"`` (item id -> its metrics; a missing prediction has the worst values and
``"missing": 1.0``). ``format_table(summary)`` renders it for a terminal.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from visagent.errors import UsageError
from visagent.eval.base import Prediction, get_adapter, summarize


def score_predictions(folder: Path, fmt: str, predictions: Path, limit: int | None = None) -> dict[str, Any]:
    """Load the dataset in ``folder`` (format ``fmt``), read ``predictions`` (the benchmark's results
    format) and score every item; see the module docstring for the keys."""
    adapter = get_adapter(fmt)
    folder, predictions = Path(folder), Path(predictions)
    if not predictions.is_file():
        raise UsageError(f"predictions file {predictions} does not exist")
    items = adapter.load(folder, limit)
    preds = adapter.read_predictions(predictions)
    by_id: dict[str, Prediction] = {}
    duplicates: set[str] = set()
    for p in preds:
        if p.id in by_id:
            duplicates.add(p.id)
        by_id[p.id] = p
    ids = {item.id for item in items}
    scores: dict[str, dict[str, float]] = {}
    per_item: dict[str, dict[str, float]] = {}
    for item in items:
        pred = by_id.get(item.id)
        s = adapter.score(item, pred)
        if pred is not None:
            scores[item.id] = s
        per_item[item.id] = {**s, "missing": 0.0 if pred is not None else 1.0}
    summary = summarize(adapter, items, scores)
    summary.update(
        format=adapter.name,
        task=adapter.task,
        dataset=str(folder),
        predictions=str(predictions),
        extra_predictions=sum(1 for pid in by_id if pid not in ids),
        duplicates=len(duplicates),
        items=per_item,
    )
    return summary


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4f}"
    return str(value)


def format_table(summary: dict[str, Any]) -> str:
    """A plain-text table: one row for all items and one per category; columns ``n`` and each metric."""
    metrics = list(summary.get("metrics", {}))
    head = ["", "n", *metrics]
    rows = [["all", str(summary.get("n", 0)), *(_cell(summary["metrics"][m]) for m in metrics)]]
    for cat, vals in summary.get("categories", {}).items():
        rows.append([str(cat), str(vals.get("n", 0)), *(_cell(vals.get(m, math.nan)) for m in metrics)])
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    n = summary.get("n", 0)
    title = f"{summary.get('format', '?')}: {n} item{'' if n == 1 else 's'}, {summary.get('missing', 0)} without a prediction"
    if summary.get("dataset"):
        title += f" ({summary['dataset']})"
    out = [title, line(head), line(["-" * w for w in widths]), *(line(r) for r in rows)]
    if summary.get("extra_predictions"):
        out.append(f"{summary['extra_predictions']} predictions name ids not in the dataset (ignored)")
    if summary.get("duplicates"):
        out.append(f"{summary['duplicates']} ids predicted more than once (the last one counts)")
    return "\n".join(out)
