"""Run a benchmark: every item under every config, one JSON line per finished item, then summaries.

``EvalRun(adapter, items, specs, out).run()`` answers each ``EvalItem`` with each ``RunSpec`` (a named
config + planner). The configs share one ``ModelPool``; ``workers`` threads answer the items of a
config at once with one ``Agent`` per config. A failing item (bad media, a run error, no answer) is
recorded as failed and scored as missing; it never stops the run.

Layout of ``out`` (``<name>``: the config's name)::

    <name>/records.jsonl   one JSON object per finished item, appended as it finishes:
                           {id, config, status: "ok"|"failed", error: one line|null,
                            prediction: {id, answer, count, box}|null, metrics: {name: float},
                            category, truth: {answers, count, box}, answer: text|null,
                            steps, tool_calls, ms, tool_ms: {tool: ms}}
    <name>/<results file>  the benchmark's own results format (``adapter.write_predictions``),
                           written when the config's items are done
    <name>/summary.json    ``summarize_records``: metrics, per-category breakdown, latency, steps
    <name>/traces/<id>.jsonl  with ``traces``: each item's trace (``visagent replay`` reads them)

With ``resume`` the ids already in ``records.jsonl`` are not run again (a line cut off by a kill is
dropped first); without it the records of an earlier run are replaced.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from visagent.errors import UsageError
from visagent.scenarios import percentile, read_results
from visagent.secrets import scrub

log = logging.getLogger(__name__)

__all__ = ["EvalRun", "OutputError", "RunSpec", "config_names", "json_safe", "percentile", "read_records", "run_eval", "summarize_records"]

class OutputError(UsageError):
    """An output file under ``out`` cannot be written (the CLI exits 3, as for other output files)."""


RECORDS = "records.jsonl"
SUMMARY = "summary.json"
DEFAULT_RESULTS = "results.json"


@dataclass
class RunSpec:
    """One config to evaluate: ``name`` (a folder name under ``out``), the ``Config``, and the planner
    (a spec such as ``script:PLAN.yaml`` / ``llava``, a Planner instance, or None for the config's)."""

    name: str
    config: Any
    planner: Any = None
    source: str | None = None  # the config file it came from, for the summary


def config_names(paths: Sequence[str | Path]) -> list[str]:
    """A run name per config file: its stem (``a.yaml`` -> ``a``); a repeated stem gets ``-2``, ``-3``."""
    names: list[str] = []
    for p in paths:
        stem = Path(p).stem or "config"
        name, k = stem, 1
        while name in names:
            k += 1
            name = f"{stem}-{k}"
        names.append(name)
    return names


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return scrub(f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__)


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """The complete records of a records file, in file order (a line cut off by a kill is skipped)."""
    return [r for r in read_results(path) if isinstance(r.get("id"), str)]


def _drop_partial_line(path: Path) -> None:
    """Drop a last line cut off by a kill, so appended records stay one per line."""
    if not path.is_file():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        path.write_bytes(data[: data.rfind(b"\n") + 1])


def trace_stats(answer: Any) -> dict[str, Any]:
    """``{steps, tool_calls, tool_ms: {tool: ms}}`` of an Answer's trace (steps: planner steps)."""
    steps = [s for s in answer.trace.steps if s.type == "planner"]
    tools = answer.trace.tool_steps()
    tool_ms: dict[str, float] = {}
    for s in tools:
        tool_ms[s.tool] = round(tool_ms.get(s.tool, 0.0) + float(s.ms or 0.0), 3)
    return {"steps": len(steps), "tool_calls": len(tools), "tool_ms": tool_ms}


def _safe_name(item_id: str) -> str:
    """``item_id`` as a file name: characters other than letters, digits, ``-``, ``_``, ``.`` become ``_``."""
    name = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in item_id).lstrip(".")
    return name[:120] or "item"


def _truth(item: Any) -> dict[str, Any]:
    truth: dict[str, Any] = {}
    if item.answers:
        truth["answers"] = list(item.answers[:10])
    if item.count is not None:
        truth["count"] = item.count
    if item.box is not None:
        truth["box"] = list(item.box)
    return truth


def _planner_name(spec: RunSpec) -> str:
    if spec.planner is None:
        return str(spec.config.planner.kind)
    return spec.planner if isinstance(spec.planner, str) else str(getattr(spec.planner, "name", type(spec.planner).__name__))


def _mean(values: Sequence[float]) -> float:
    return float(sum(values) / len(values)) if values else 0.0


def _run_stats(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Steps, tool calls, latency and per-tool time per question of ``records``."""
    ms = [float(r.get("ms") or 0.0) for r in records]
    tool_ms: dict[str, float] = {}
    for r in records:
        for tool, t in (r.get("tool_ms") or {}).items():
            tool_ms[tool] = tool_ms.get(tool, 0.0) + float(t)
    n = len(records) or 1
    return {
        "failed": sum(1 for r in records if r.get("status") != "ok"),
        "steps": round(_mean([float(r.get("steps") or 0) for r in records]), 3),
        "tool_calls": round(_mean([float(r.get("tool_calls") or 0) for r in records]), 3),
        "latency_ms": {"p50": round(percentile(ms, 0.5), 1), "p95": round(percentile(ms, 0.95), 1), "mean": round(_mean(ms), 1)},
        "tool_ms": {tool: round(t / n, 1) for tool, t in sorted(tool_ms.items())},  # per question, over every question
    }


def summarize_records(adapter: Any, items: Sequence[Any], records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The summary of one config's run over ``items``: the adapter's ``summarize`` (``n``,
    ``missing``, ``metrics``, ``categories``) plus ``failed``, ``steps`` and ``tool_calls`` (means per
    question), ``latency_ms`` ``{p50, p95, mean}``, ``tool_ms`` (mean ms per question per tool), and
    the same run figures inside each category. Records of ids not among ``items`` are ignored."""
    from visagent.eval.base import summarize

    wanted = {it.id for it in items}
    by_id = {r["id"]: r for r in records if r["id"] in wanted}
    scores = {i: dict(r.get("metrics") or {}) for i, r in by_id.items()}
    done = [it for it in items if it.id in by_id]
    summary = dict(summarize(adapter, done, scores))
    summary.update(_run_stats(list(by_id.values())))
    cats = summary.get("categories") or {}
    for cat, entry in cats.items():
        rs = [by_id[it.id] for it in done if it.category is not None and str(it.category) == cat]
        stats = _run_stats(rs)
        entry.update(failed=stats["failed"], steps=stats["steps"], tool_calls=stats["tool_calls"], latency_ms=stats["latency_ms"])
    return summary


@dataclass
class EvalRun:
    """Answers ``items`` with each of ``specs`` and writes records, results files and summaries
    under ``out`` (see the module docstring).

    ``on_start(name, total, resumed)`` is called before a config's items run (``total``: items to
    run now, ``resumed``: items already recorded); ``on_record(name, record)`` after each item."""

    adapter: Any
    items: Sequence[Any]
    specs: Sequence[RunSpec]
    out: Path
    workers: int = 1
    resume: bool = False
    max_steps: int | None = None
    traces: bool = False
    pool: Any = None
    on_start: Callable[[str, int, int], None] | None = None
    on_record: Callable[[str, dict[str, Any]], None] | None = None
    summaries: dict[str, dict[str, Any]] = field(default_factory=dict)
    records: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        if self.workers < 1:
            raise UsageError(f"workers must be at least 1, got {self.workers}")
        names = [s.name for s in self.specs]
        if not names:
            raise UsageError("nothing to run: no config given")
        if len(set(names)) != len(names):
            raise UsageError(f"two configs are named {next(n for n in names if names.count(n) > 1)!r}; give them different names")
        ids = [it.id for it in self.items]
        if len(set(ids)) != len(ids):
            raise UsageError(f"the dataset lists item {next(i for i in ids if ids.count(i) > 1)!r} twice")

    # -- paths ------------------------------------------------------------------------------
    def folder(self, name: str) -> Path:
        return self.out / name

    def results_path(self, name: str) -> Path:
        return self.folder(name) / (getattr(self.adapter, "results_file", None) or DEFAULT_RESULTS)

    # -- running ----------------------------------------------------------------------------
    def run(self) -> dict[str, dict[str, Any]]:
        """Run every config; returns ``{name: summary}`` (also written as ``<name>/summary.json``)."""
        from visagent.pool import ModelPool

        if self.pool is None:
            self.pool = ModelPool(self.specs[0].config.pool.budget_bytes)
        for spec in self.specs:
            self._run_config(spec)
        return self.summaries

    def _agent(self, spec: RunSpec) -> Any:
        from visagent.agent import Agent

        return Agent(spec.config, planner=spec.planner, pool=self.pool)

    def _run_config(self, spec: RunSpec) -> None:
        folder = self.folder(spec.name)
        path = folder / RECORDS
        try:
            folder.mkdir(parents=True, exist_ok=True)
            if self.resume:
                _drop_partial_line(path)
            elif path.exists():
                path.unlink()
        except OSError as exc:
            raise OutputError(f"cannot write into {folder}: {exc.strerror or exc}") from None
        previous = {r["id"]: r for r in read_records(path)} if self.resume else {}
        todo = [it for it in self.items if it.id not in previous]
        resumed = len(self.items) - len(todo)
        if self.on_start is not None:
            self.on_start(spec.name, len(todo), resumed)
        agent = self._agent(spec) if todo else None
        new: dict[str, dict[str, Any]] = {}
        lock = threading.Lock()
        try:
            fh = path.open("a", encoding="utf-8")
        except OSError as exc:
            raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None
        with fh:

            def one(item: Any) -> None:
                record = self._run_item(spec, agent, item)
                with lock:
                    fh.write(json.dumps(record, default=str) + "\n")
                    fh.flush()
                    new[item.id] = record
                if self.on_record is not None:
                    self.on_record(spec.name, record)

            if self.workers == 1 or len(todo) <= 1:
                for item in todo:
                    one(item)
            else:
                with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix=f"visagent-eval-{spec.name}") as ex:
                    futures = [ex.submit(one, item) for item in todo]
                    try:
                        for f in futures:
                            f.result()
                    except BaseException:
                        for f in futures:
                            f.cancel()
                        raise
        records = [new.get(it.id) or previous[it.id] for it in self.items if it.id in new or it.id in previous]
        self.records[spec.name] = records
        self._write_results(spec, records)
        summary = summarize_records(self.adapter, self.items, records)
        summary.update(config=spec.name, source=spec.source, profile=spec.config.profile,
                       planner=_planner_name(spec),
                       results=str(self.results_path(spec.name)))  # fmt: skip
        self.summaries[spec.name] = summary
        try:
            (folder / SUMMARY).write_text(json.dumps(json_safe(summary), indent=2, default=str) + "\n", encoding="utf-8")
        except OSError as exc:
            raise OutputError(f"cannot write {folder / SUMMARY}: {exc.strerror or exc}") from None

    def _write_results(self, spec: RunSpec, records: Sequence[dict[str, Any]]) -> None:
        from visagent.eval.base import Prediction

        preds = [Prediction.model_validate(r["prediction"]) for r in records if r.get("prediction")]
        path = self.results_path(spec.name)
        try:
            self.adapter.write_predictions(preds, path)
        except OSError as exc:
            raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None

    def _run_item(self, spec: RunSpec, agent: Any, item: Any) -> dict[str, Any]:
        """Answer one item -> its record (never raises for a problem of the item itself)."""
        record: dict[str, Any] = {
            "id": item.id, "config": spec.name, "status": "failed", "error": None, "prediction": None, "metrics": {},
            "category": item.category, "truth": _truth(item), "answer": None, "steps": 0, "tool_calls": 0, "ms": 0.0,
            "tool_ms": {},
        }  # fmt: skip
        prediction = None
        t0 = time.perf_counter()
        try:
            trace = self.folder(spec.name) / "traces" / f"{_safe_name(item.id)}.jsonl" if self.traces else None
            answer = agent.ask(item.question, list(item.media), max_steps=self.max_steps, trace_path=trace)
        except Exception as exc:  # noqa: BLE001 - a broken item is recorded, the run goes on
            record["error"] = _one_line(exc)
        else:
            record.update(trace_stats(answer))
            record["answer"] = answer.answer if answer.ok else None
            if answer.ok:
                try:
                    prediction = self.adapter.prediction(item, answer)
                    record["status"] = "ok"
                except Exception as exc:  # noqa: BLE001
                    record["error"] = f"no prediction from the answer: {_one_line(exc)}"
            else:
                record["error"] = scrub(f"{answer.status}: {(answer.error or 'no answer').splitlines()[0] if answer.error else 'no answer'}")
        record["ms"] = round((time.perf_counter() - t0) * 1000, 1)
        if prediction is not None:
            record["prediction"] = prediction.model_dump(mode="json")
        try:
            record["metrics"] = {k: float(v) for k, v in self.adapter.score(item, prediction).items()}
        except Exception as exc:  # noqa: BLE001
            record["status"] = "failed"
            record["error"] = record["error"] or f"cannot score: {_one_line(exc)}"
            record["metrics"] = {m: 0.0 for m in getattr(self.adapter, "metrics", ())}
        if record["status"] != "ok":
            log.info("item %s failed under %s: %s", item.id, spec.name, record["error"])
        return record


def json_safe(value: Any) -> Any:
    """``value`` with NaN / infinite floats as None, so it is valid JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


COMPARISON_JSON = "comparison.json"
COMPARISON_CSV = "comparison.csv"
REPORT = "report.html"


def run_eval(
    dataset: str | Path,
    fmt: str,
    specs: Sequence[RunSpec],
    out: str | Path,
    *,
    limit: int | None = None,
    workers: int = 1,
    resume: bool = False,
    max_steps: int | None = None,
    traces: bool = False,
    baseline: str | None = None,
    pool: Any = None,
    on_start: Callable[[str, int, int], None] | None = None,
    on_record: Callable[[str, dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Load ``dataset`` (format ``fmt``), run every spec on its items (``EvalRun``), compare the
    configs paired by item (``visagent.eval.compare``) and write ``comparison.json``,
    ``comparison.csv`` and ``report.html`` under ``out``.

    Returns ``{"format", "dataset", "out", "items", "configs": {name: summary}, "comparison",
    "report", "csv"}`` (JSON-ready: NaN written as null)."""
    from visagent.eval.base import get_adapter
    from visagent.eval.compare import compare, comparison_csv
    from visagent.eval.html import write_eval_report

    adapter = get_adapter(fmt)
    folder = Path(dataset).expanduser().resolve()
    items = adapter.load(folder, limit)
    if not items:
        raise UsageError(f"no items in {folder} (format {adapter.name})")
    out = Path(out)
    run = EvalRun(adapter, items, specs, out, workers=workers, resume=resume, max_steps=max_steps, traces=traces, pool=pool,
                  on_start=on_start, on_record=on_record)  # fmt: skip
    summaries = run.run()
    comparison = compare(run.records, adapter.metrics, baseline=baseline)
    paths = {"comparison": out / COMPARISON_JSON, "csv": out / COMPARISON_CSV, "report": out / REPORT}
    try:
        paths["comparison"].write_text(json.dumps(json_safe(comparison), indent=2) + "\n", encoding="utf-8")
        paths["csv"].write_text(comparison_csv(comparison), encoding="utf-8")
        write_eval_report(paths["report"], fmt=adapter.name, dataset=str(folder), task=adapter.task, metrics=adapter.metrics,
                          summaries=summaries, records=run.records, comparison=comparison)  # fmt: skip
    except OSError as exc:
        raise OutputError(f"cannot write into {out}: {exc.strerror or exc}") from None
    return json_safe({
        "format": adapter.name, "dataset": str(folder), "out": str(out), "items": len(items), "task": adapter.task,
        "metrics": list(adapter.metrics), "configs": summaries, "comparison": comparison,
        "report": str(paths["report"]), "csv": str(paths["csv"]),
    })  # fmt: skip
