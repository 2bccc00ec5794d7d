"""Paired comparison of configs run on the same items.

``compare(records, metrics)`` takes each config's records (``visagent.eval.runner`` records: ``id``,
``metrics``, ``ms``, ``steps``, ``tool_calls``, ``status``) and compares them on the items every
config answered (paired by item id). The first config is the baseline; for every other config and
every quantity (the benchmark's metrics, then ``latency_ms``, ``steps``, ``tool_calls``) it gives the
mean difference (other - baseline) with a paired bootstrap confidence interval: the items are
resampled with replacement ``resamples`` times with a fixed ``seed`` and the interval is the
``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles of the resampled mean differences.

The result (JSON-ready)::

    {"baseline": NAME, "n": common items, "level": 0.95, "resamples": 1000, "seed": 0,
     "metrics": [metric names], "configs": {NAME: {"n", "failed", "metrics": {m: mean},
        "ci": {m: [low, high]}, "latency_ms": {"p50", "p95", "mean"}, "steps", "tool_calls"}},
     "differences": [{"config", "baseline", "quantity", "mean", "baseline_mean", "diff",
        "ci_low", "ci_high", "n"}]}
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from visagent.eval.runner import percentile

__all__ = ["CSV_COLUMNS", "bootstrap_ci", "compare", "comparison_csv", "comparison_table"]

RUN_QUANTITIES = ("latency_ms", "steps", "tool_calls")
CSV_COLUMNS = ("config", "baseline", "quantity", "mean", "baseline_mean", "diff", "ci_low", "ci_high", "n")


def bootstrap_ci(values: Sequence[float], resamples: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """The percentile bootstrap interval of the mean of ``values`` (paired differences, say):
    ``(low, high)``; ``(nan, nan)`` for no values."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(resamples, x.size))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def _value(record: Mapping[str, Any], quantity: str) -> float:
    if quantity == "latency_ms":
        return float(record.get("ms") or 0.0)
    if quantity in ("steps", "tool_calls"):
        return float(record.get(quantity) or 0.0)
    return float((record.get("metrics") or {}).get(quantity, 0.0))


def _r(x: float, digits: int = 4) -> float | None:
    return None if x != x else round(float(x), digits)  # NaN -> None (JSON null)


def compare(
    records: Mapping[str, Sequence[Mapping[str, Any]]],
    metrics: Sequence[str],
    *,
    baseline: str | None = None,
    resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, Any]:
    """Compare the configs of ``records`` (``{name: records}``, in order) on their common items."""
    names = list(records)
    if not names:
        return {"baseline": None, "n": 0, "metrics": list(metrics), "configs": {}, "differences": []}
    base = baseline if baseline is not None else names[0]
    if base not in records:
        raise ValueError(f"unknown baseline config {base!r}; configs: {', '.join(names)}")
    by_id = {name: {r["id"]: r for r in rs} for name, rs in records.items()}
    order = [r["id"] for r in records[base]]
    common = [i for i in order if all(i in by_id[n] for n in names)]
    quantities = [*metrics, *RUN_QUANTITIES]
    values = {n: {q: np.array([_value(by_id[n][i], q) for i in common], dtype=float) for q in quantities} for n in names}
    configs: dict[str, Any] = {}
    for n in names:
        rs = [by_id[n][i] for i in common]
        ms = [float(r.get("ms") or 0.0) for r in rs]
        configs[n] = {
            "n": len(rs),
            "failed": sum(1 for r in rs if r.get("status") != "ok"),
            "metrics": {m: _r(values[n][m].mean()) if len(rs) else None for m in metrics},
            "ci": {m: [_r(v) for v in bootstrap_ci(values[n][m], resamples, seed, level)] for m in metrics},
            "latency_ms": {"p50": round(percentile(ms, 0.5), 1), "p95": round(percentile(ms, 0.95), 1),
                           "mean": round(float(np.mean(ms)), 1) if ms else None},  # fmt: skip
            "steps": _r(values[n]["steps"].mean()) if len(rs) else None,
            "tool_calls": _r(values[n]["tool_calls"].mean()) if len(rs) else None,
        }
    differences = []
    for n in names:
        if n == base:
            continue
        for q in quantities:
            d = values[n][q] - values[base][q]
            lo, hi = bootstrap_ci(d, resamples, seed, level)
            differences.append({
                "config": n, "baseline": base, "quantity": q,
                "mean": _r(values[n][q].mean()) if len(common) else None,
                "baseline_mean": _r(values[base][q].mean()) if len(common) else None,
                "diff": _r(d.mean()) if len(common) else None, "ci_low": _r(lo), "ci_high": _r(hi), "n": len(common),
            })  # fmt: skip
    return {
        "baseline": base, "n": len(common), "level": level, "resamples": resamples, "seed": seed,
        "metrics": list(metrics), "configs": configs, "differences": differences,
    }  # fmt: skip


def comparison_csv(comparison: Mapping[str, Any]) -> str:
    """One row per (config, quantity): ``CSV_COLUMNS``; the baseline's rows have no difference."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    base = comparison.get("baseline")
    for name, c in (comparison.get("configs") or {}).items():
        if name != base:
            continue
        for q in [*comparison.get("metrics", []), *RUN_QUANTITIES]:
            mean = c["latency_ms"]["mean"] if q == "latency_ms" else (c["metrics"].get(q) if q in c["metrics"] else c.get(q))
            w.writerow([name, "", q, _cell(mean), "", "", *(_cell(v) for v in c["ci"].get(q, ["", ""])), c["n"]])
    for d in comparison.get("differences") or []:
        w.writerow([_cell(d[k]) for k in CSV_COLUMNS])
    return buf.getvalue()


def _cell(v: Any) -> Any:
    return "" if v is None else v


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    return f"{v:.1f}" if abs(v) >= 10 else f"{v:.2f}"


def comparison_table(comparison: Mapping[str, Any], title: str = "") -> Any:
    """A rich Table: one row per config, the metric means (with the difference to the baseline and
    its interval), latency p50 / p95, steps and tool calls per question."""
    from rich.table import Table

    metrics = list(comparison.get("metrics") or [])
    diffs = {(d["config"], d["quantity"]): d for d in comparison.get("differences") or []}
    level = int(round(float(comparison.get("level", 0.95)) * 100))
    n = comparison.get("n", 0)
    if len(comparison.get("configs") or {}) > 1:
        caption = f"{n} common items; differences vs {comparison.get('baseline')} with {level}% paired bootstrap intervals"
    else:
        caption = f"{n} item{'s' * (n != 1)}; per question: latency, planner steps, tool calls"
    table = Table(title=title or None, caption=caption)
    table.add_column("config")
    for m in metrics:
        table.add_column(m, justify="right")
    for col in ("failed", "p50 ms", "p95 ms", "steps", "tools"):
        table.add_column(col, justify="right")
    for name, c in (comparison.get("configs") or {}).items():
        cells = []
        for m in metrics:
            v = c["metrics"].get(m)
            cell = "-" if v is None else f"{v:.3f}"
            d = diffs.get((name, m))
            if d is not None and d["diff"] is not None:
                cell += f" ({d['diff']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}])"
            cells.append(cell)
        lat = c["latency_ms"]
        table.add_row(name, *cells, str(c["failed"]), _fmt(lat["p50"]), _fmt(lat["p95"]),
                      _fmt(c["steps"]), _fmt(c["tool_calls"]))  # fmt: skip
    return table
