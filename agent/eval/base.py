"""The evaluation contract: items, predictions, the adapter each benchmark format implements, and
the per-category summary.

- ``EvalItem``: one benchmark question, read from the files as distributed (ids as strings, media
  as absolute paths, ground truth as distributed).
- ``Prediction``: what a model answered for one item (text, a count, a box).
- ``Adapter``: one benchmark format (``name``, e.g. ``"vqav2"``): ``load`` reads the folder,
  ``read_predictions`` / ``write_predictions`` speak the benchmark's own results format, ``score``
  computes the per-item metrics the benchmark defines (``metrics``: their names, the first is the
  headline), ``prediction`` turns a visagent ``Answer`` into a ``Prediction``.
- ``register_format``: the decorator that adds an ``Adapter`` subclass to the registry;
  ``get_adapter(name)`` / ``available_formats()`` read it.
- ``summarize``: means of the per-item metrics, overall and per category.

Boxes are ``[x0, y0, x1, y1]`` pixels of the original image everywhere.
"""

from __future__ import annotations

import logging
import math
import re
from abc import ABC, abstractmethod
from collections.abc import Iterable
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, Field

from visagent.errors import UsageError

log = logging.getLogger("visagent.eval")

Task = Literal["vqa", "count", "grounding", "tool"]


class EvalItem(BaseModel):
    """One benchmark question.

    ``id``: the benchmark's own question / item id as a string; ``media``: absolute image paths;
    ``question``: what the agent is asked; ``answers``: ground-truth answers as distributed (VQAv2 /
    TextVQA: the 10 annotator answers); ``count``: counting truth; ``box``: grounding truth
    ``[x0, y0, x1, y1]`` pixels; ``category``: the per-category breakdown key; ``extra``: anything
    else the format keeps (e.g. the raw id type, a whitelist).
    """

    id: str
    media: list[str]
    question: str
    task: Task
    answers: list[str] = Field(default_factory=list)
    count: int | None = None
    box: list[float] | None = None
    category: str | None = None
    extra: dict[str, Any] = Field(default_factory=dict)


class Prediction(BaseModel):
    """A model's answer to one item: ``answer`` text, ``count``, ``box`` ``[x0, y0, x1, y1]``."""

    id: str
    answer: str | None = None
    count: float | None = None
    box: list[float] | None = None


class Adapter(ABC):
    """One benchmark format. Subclasses set ``name``, ``task``, ``metrics`` and implement ``load``,
    ``read_predictions``, ``write_predictions`` and ``score``; ``prediction`` has a default per
    ``task``. Register a subclass with ``@register_format``."""

    name: ClassVar[str]
    task: ClassVar[str]
    metrics: ClassVar[tuple[str, ...]]
    description: ClassVar[str] = ""

    @abstractmethod
    def load(self, folder: Path, limit: int | None = None) -> list[EvalItem]:
        """The items of the dataset in ``folder`` (files as distributed), the first ``limit`` if set.
        A missing file or field is a one-line ``UsageError`` naming it."""

    @abstractmethod
    def read_predictions(self, path: Path) -> list[Prediction]:
        """Predictions from a file in the benchmark's own results format."""

    @abstractmethod
    def write_predictions(self, predictions: list[Prediction], path: Path) -> None:
        """Write predictions in the benchmark's own results format."""

    @abstractmethod
    def score(self, item: EvalItem, prediction: Prediction | None) -> dict[str, float]:
        """The per-item metrics (keys: ``metrics``); ``None`` (no prediction) scores the worst values."""

    def prediction(self, item: EvalItem, answer: Any) -> Prediction:
        """A ``Prediction`` from a visagent ``Answer``: its text without the cited ids
        (``answer_text``); for counting also the first number it states; for grounding the box of
        the first cited region."""
        text = answer_text(answer)
        pred = Prediction(id=item.id, answer=text)
        if self.task == "count":
            from visagent.grounding import answer_number

            pred.count = answer_number(text)
        elif self.task == "grounding":
            pred.box = cited_box(answer)
        return pred

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"


_EMPTY_BRACKETS = re.compile(r"\s*(?:\[[\s,;]*\]|\([\s,;]*\))")
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([.,;:!?])")


def answer_text(answer: Any) -> str:
    """An ``Answer``'s text as a benchmark sees it: region / observation ids it cites removed, with
    the brackets they leave empty (``"2 cups [det_1_0, det_1_1]."`` -> ``"2 cups."``)."""
    from visagent import ids

    text = str(getattr(answer, "answer", answer) or "")
    text = ids.any_id_in_text_re().sub("", text)
    text = _EMPTY_BRACKETS.sub("", text)
    text = _SPACE_BEFORE_PUNCT.sub(r"\1", text)
    return " ".join(text.split())


def cited_box(answer: Any) -> list[float] | None:
    """The ``[x0, y0, x1, y1]`` box of the first region an ``Answer`` cites, or None."""
    for ev in getattr(answer, "evidence", None) or []:
        region = getattr(ev, "region", None) or {}
        box = region.get("box") if isinstance(region, dict) else None
        if box and len(box) == 4:
            return [float(v) for v in box]
    return None


_FORMATS: dict[str, type[Adapter]] = {}


def register_format(cls: type[Adapter]) -> type[Adapter]:
    """Class decorator: add an ``Adapter`` subclass under its ``name`` (a clash is an error)."""
    for attr in ("name", "task", "metrics"):
        if not getattr(cls, attr, None):
            raise TypeError(f"eval format {cls.__name__} must set {attr!r}")
    if cls.task not in ("vqa", "count", "grounding", "tool"):
        raise TypeError(f"eval format {cls.__name__}: unknown task {cls.task!r}")
    other = _FORMATS.get(cls.name)
    if other is not None and other is not cls:
        raise TypeError(f"eval format {cls.name!r} is already registered by {other.__name__}")
    _FORMATS[cls.name] = cls
    return cls


FORMATS_GROUP = "visagent.eval_formats"
_plugins_loaded = False


def _load_builtin() -> None:
    """Register the built-in formats, then (once) those of the ``visagent.eval_formats``
    entry-point group: each names a module (importing it registers its formats) or an ``Adapter``
    subclass. A broken one is logged and skipped."""
    global _plugins_loaded
    import visagent.eval.formats  # noqa: F401  (registers the built-in formats)

    if _plugins_loaded:
        return
    _plugins_loaded = True
    from importlib.metadata import entry_points

    for ep in sorted(entry_points(group=FORMATS_GROUP), key=lambda e: e.name):
        try:
            obj = ep.load()
            if isinstance(obj, type) and issubclass(obj, Adapter):
                register_format(obj)
        except Exception as exc:  # noqa: BLE001 - a broken plugin must not break the others
            log.warning("eval format plugin %r skipped: %s: %s", ep.name, type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")


def available_formats() -> list[str]:
    """The registered format names, sorted."""
    _load_builtin()
    return sorted(_FORMATS)


def get_adapter(name: str) -> Adapter:
    """A fresh adapter for format ``name``; an unknown name is a ``UsageError`` listing them all."""
    _load_builtin()
    cls = _FORMATS.get(str(name).strip().lower())
    if cls is None:
        raise UsageError(f"unknown eval format {name!r}; available: {', '.join(sorted(_FORMATS))}")
    return cls()


def _natural(key: str) -> tuple[int, int, str]:
    """Sort key: numbers by value first (``"2"`` before ``"10"``), then text."""
    return (0, int(key), "") if key.isdigit() else (1, 0, key)


def _mean_row(rows: list[dict[str, float]], metrics: tuple[str, ...]) -> dict[str, Any]:
    return {"n": len(rows), **{m: sum(float(r.get(m, 0.0)) for r in rows) / len(rows) for m in metrics}}


def summarize(adapter: Adapter, items: Iterable[EvalItem], scores: dict[str, dict[str, float]]) -> dict[str, Any]:
    """Means of the per-item metrics over ``items`` (``scores``: item id -> metrics; an item without
    scores is scored as missing, i.e. ``adapter.score(item, None)``).

    Returns ``{"n", "missing", "metrics": {name: mean}, "categories": {category: {"n", name: mean}}}``
    (``categories`` empty when no item has one), plus ``"groups": {key: {value: {"n", name: mean}}}``
    when items carry further breakdowns in ``extra["groups"]`` (e.g. GQA's semantic type).
    """
    items = list(items)
    metrics = tuple(adapter.metrics)
    rows: list[dict[str, float]] = []
    cats: dict[str, list[dict[str, float]]] = {}
    groups: dict[str, dict[str, list[dict[str, float]]]] = {}
    missing = 0
    for item in items:
        s = scores.get(item.id)
        if s is None:
            missing += 1
            s = adapter.score(item, None)
        rows.append(s)
        if item.category is not None:
            cats.setdefault(str(item.category), []).append(s)
        for key, value in (item.extra.get("groups") or {}).items():
            if value is not None:
                groups.setdefault(str(key), {}).setdefault(str(value), []).append(s)
    n = len(rows)
    summary: dict[str, Any] = {
        "n": n,
        "missing": missing,
        "metrics": _mean_row(rows, metrics) if n else {m: math.nan for m in metrics},
        "categories": {name: _mean_row(cats[name], metrics) for name in sorted(cats, key=_natural)},
    }
    summary["metrics"].pop("n", None)
    if groups:
        summary["groups"] = {k: {v: _mean_row(g[v], metrics) for v in sorted(g, key=_natural)} for k, g in sorted(groups.items())}
    return summary


def missing_media(items: Iterable[EvalItem]) -> list[str]:
    """The media paths of ``items`` that are not files (scoring needs none; running needs all)."""
    seen: set[str] = set()
    out = []
    for item in items:
        for path in item.media:
            if path not in seen:
                seen.add(path)
                if not Path(path).is_file():
                    out.append(path)
    return out
