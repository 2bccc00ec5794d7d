"""A self-contained HTML report of an evaluation run (one or several configs on the same items).

``eval_report_html(...)`` returns one HTML page with no script and nothing loaded from elsewhere:
the summary table (per config: items, failures, each metric, latency p50 / p95, steps, tool calls,
time per tool), the paired differences to the baseline with their bootstrap intervals, and inline
SVG plots: the headline metric per category and config (``#plot-categories``), the latency
distribution per config (``#plot-latency``), and for counting sets a count confusion matrix per
config (``.plot-confusion``: ground-truth count down, predicted count across). Every text from the
data (ids, categories, errors) is escaped.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from html import escape
from pathlib import Path
from typing import Any

__all__ = ["eval_report_html", "write_eval_report"]

COLORS = ("#3b6fd8", "#e07b39", "#3a9e5f", "#b34fb0", "#c8a32c", "#4aa6b5", "#d24d57", "#7a7a7a")
MAX_COUNT = 12  # confusion matrices show counts 0..MAX_COUNT, larger ones in a last ">" bin
MAX_FAILURES = 20

CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;background:#f5f6f8;color:#1d232b}
main{max-width:1100px;margin:0 auto;padding:20px}
h1{font-size:20px;margin:0 0 4px} h2{font-size:16px;margin:24px 0 8px} h3{font-size:14px;margin:12px 0 4px}
.meta{color:#5b6573} section{background:#fff;border:1px solid #dde1e6;border-radius:8px;padding:12px 16px;margin:12px 0}
table{border-collapse:collapse;width:100%} th,td{padding:4px 8px;border-bottom:1px solid #eceff2;text-align:right}
th:first-child,td:first-child{text-align:left} th{background:#f0f2f5;font-weight:600}
.swatch{display:inline-block;width:10px;height:10px;border-radius:2px;margin-right:6px}
svg text{font:11px system-ui,sans-serif;fill:#1d232b} .plots{display:flex;flex-wrap:wrap;gap:16px}
.neg{color:#b3261e} .pos{color:#1e7b34} code{font-family:ui-monospace,Menlo,monospace;font-size:12px}
"""


def _num(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


def _val(v: Any) -> str:
    f = _num(v)
    return "-" if f is None else f"{f:.3f}"


def _ms(v: Any) -> str:
    f = _num(v)
    return "-" if f is None else f"{f:.0f}"


def _color(k: int) -> str:
    return COLORS[k % len(COLORS)]


# -- tables -----------------------------------------------------------------------------------
def _summary_table(summaries: Mapping[str, Mapping[str, Any]], metrics: Sequence[str]) -> str:
    tools = sorted({t for s in summaries.values() for t in (s.get("tool_ms") or {})})
    head = ["config", "items", "failed", *metrics, "p50 ms", "p95 ms", "steps", "tool calls",
            *[f"{t} ms" for t in tools]]  # fmt: skip
    rows = []
    for k, (name, s) in enumerate(summaries.items()):
        lat = s.get("latency_ms") or {}
        cells = [
            f'<span class="swatch" style="background:{_color(k)}"></span>{escape(name)}', str(s.get("n", 0)),
            str(s.get("failed", 0)), *[_val((s.get("metrics") or {}).get(m)) for m in metrics], _ms(lat.get("p50")),
            _ms(lat.get("p95")), f"{_num(s.get('steps')) or 0:.2f}", f"{_num(s.get('tool_calls')) or 0:.2f}",
            *[_ms((s.get("tool_ms") or {}).get(t)) for t in tools],
        ]  # fmt: skip
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return (
        '<table id="summary"><thead><tr>' + "".join(f"<th>{escape(h)}</th>" for h in head) + "</tr></thead><tbody>"
        + "".join(rows) + "</tbody></table>"
    )  # fmt: skip


def _differences_table(comparison: Mapping[str, Any]) -> str:
    diffs = comparison.get("differences") or []
    if not diffs:
        return ""
    metrics = set(comparison.get("metrics") or [])
    level = int(round(float(comparison.get("level", 0.95)) * 100))
    rows = []
    for d in diffs:
        digits = 3 if d["quantity"] in metrics else 1
        diff = _num(d.get("diff"))
        lo, hi = _num(d.get("ci_low")), _num(d.get("ci_high"))
        cls = "pos" if lo is not None and lo > 0 else "neg" if hi is not None and hi < 0 else ""
        fmt = (lambda v: "-" if v is None else f"{v:+.{digits}f}")  # noqa: E731
        rows.append(
            f'<tr class="{cls}"><td>{escape(str(d["config"]))} vs {escape(str(d["baseline"]))}</td>'
            f"<td>{escape(d['quantity'])}</td><td>{fmt(diff)}</td><td>[{fmt(lo)}, {fmt(hi)}]</td><td>{d['n']}</td></tr>"
        )
    return (
        f'<h2>Paired differences ({level}% bootstrap intervals, {comparison.get("resamples")} resamples)</h2>'
        '<table id="differences"><thead><tr><th>configs</th><th>quantity</th><th>difference</th><th>interval</th>'
        "<th>items</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>"
    )


# -- plots ------------------------------------------------------------------------------------
def _legend(names: Sequence[str], x: float, y: float) -> str:
    parts = []
    for k, name in enumerate(names):
        yy = y + 14 * k
        parts.append(f'<rect x="{x}" y="{yy - 9}" width="10" height="10" fill="{_color(k)}"/><text x="{x + 14}" y="{yy}">{escape(name)}</text>')
    return "".join(parts)


def _category_plot(summaries: Mapping[str, Mapping[str, Any]], metric: str) -> str:
    """Grouped bars: ``metric`` per category (or "all") per config; the axis runs from 0 to 1, or to
    the largest value where one is larger."""
    names = list(summaries)
    cats = sorted({c for s in summaries.values() for c in (s.get("categories") or {})})
    groups = cats or ["all"]

    def value(s: Mapping[str, Any], cat: str) -> float:
        src = s.get("metrics") if cat == "all" and not cats else (s.get("categories") or {}).get(cat, {})
        return _num((src or {}).get(metric)) or 0.0

    peak = max([1.0, *(value(summaries[n], c) for n in names for c in groups)])
    bar = 16
    gap = 18
    group_w = bar * len(names) + gap
    left, top, plot_h = 44, 16, 180
    width = max(360, left + group_w * len(groups) + 140)
    height = top + plot_h + 70
    parts = [f'<svg id="plot-categories" class="plot" role="img" aria-label="{escape(metric)} per category" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg">']  # fmt: skip
    for t in range(0, 5):
        y = top + plot_h * (1 - t / 4)
        parts.append(f'<line x1="{left}" x2="{left + group_w * len(groups)}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e3e6ea"/>')
        parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{peak * t / 4:.2f}</text>')
    for g, cat in enumerate(groups):
        x0 = left + gap / 2 + g * group_w
        for k, name in enumerate(names):
            v = value(summaries[name], cat)
            h = plot_h * max(0.0, min(1.0, v / peak))
            parts.append(
                f'<rect class="bar" x="{x0 + k * bar:.1f}" y="{top + plot_h - h:.1f}" width="{bar - 2}" height="{h:.1f}" '
                f'fill="{_color(k)}"><title>{escape(name)} / {escape(cat)}: {v:.3f}</title></rect>'
            )
        label = cat if len(cat) <= 14 else cat[:13] + "…"
        cx = x0 + bar * len(names) / 2
        parts.append(f'<text x="{cx:.1f}" y="{top + plot_h + 14}" text-anchor="end" transform="rotate(-30 {cx:.1f} {top + plot_h + 14})">{escape(label)}</text>')
    parts.append(_legend(names, left + group_w * len(groups) + 16, top + 10))
    parts.append("</svg>")
    return "".join(parts)


def _latency_plot(records: Mapping[str, Sequence[Mapping[str, Any]]]) -> str:
    """Per config, a histogram of item latency (shared bins), drawn as outlined steps."""
    names = list(records)
    values = {n: [float(r.get("ms") or 0.0) for r in rs] for n, rs in records.items()}
    every = [v for vs in values.values() for v in vs]
    left, top, plot_w, plot_h = 52, 16, 480, 180
    width, height = left + plot_w + 150, top + plot_h + 44
    parts = [f'<svg id="plot-latency" class="plot" role="img" aria-label="latency distribution" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg">']  # fmt: skip
    if every:
        lo, hi = min(every), max(every)
        if hi <= lo:
            hi = lo + 1.0
        bins = 20
        step = (hi - lo) / bins
        counts = {n: [0] * bins for n in names}
        for n, vs in values.items():
            for v in vs:
                counts[n][min(bins - 1, int((v - lo) / step))] += 1
        top_count = max(max(c) for c in counts.values()) or 1
        for k, n in enumerate(names):
            pts = [f"{left},{top + plot_h}"]
            for b, c in enumerate(counts[n]):
                y = top + plot_h * (1 - c / top_count)
                pts += [f"{left + plot_w * b / bins:.1f},{y:.1f}", f"{left + plot_w * (b + 1) / bins:.1f},{y:.1f}"]
            pts.append(f"{left + plot_w},{top + plot_h}")
            parts.append(f'<polyline class="hist" points="{" ".join(pts)}" fill="{_color(k)}" fill-opacity="0.25" stroke="{_color(k)}" stroke-width="1.5"/>')
        for t in range(0, 5):
            x = left + plot_w * t / 4
            parts.append(f'<text x="{x:.1f}" y="{top + plot_h + 14}" text-anchor="middle">{lo + (hi - lo) * t / 4:.0f}</text>')
        parts.append(f'<text x="{left + plot_w / 2}" y="{top + plot_h + 32}" text-anchor="middle">latency per item (ms)</text>')
        parts.append(f'<text x="{left - 6}" y="{top + 8}" text-anchor="end">{top_count}</text><text x="{left - 6}" y="{top + plot_h}" text-anchor="end">0</text>')
    parts.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{top + plot_h}" y2="{top + plot_h}" stroke="#9aa3ad"/>')
    parts.append(_legend(names, left + plot_w + 16, top + 10))
    parts.append("</svg>")
    return "".join(parts)


def _count_bin(v: Any) -> int | None:
    f = _num(v)
    if f is None:
        return None
    return min(MAX_COUNT + 1, max(0, int(round(f))))


def _confusion_plot(name: str, records: Sequence[Mapping[str, Any]], k: int) -> str:
    """A heat grid: rows the ground-truth count, columns the predicted count (``>`` above
    ``MAX_COUNT``, ``none`` for no prediction); a cell's darkness is its share of its row."""
    truths = [_count_bin((r.get("truth") or {}).get("count")) for r in records]
    preds = [_count_bin((r.get("prediction") or {}).get("count")) for r in records]
    seen = [t for t in truths if t is not None] + [p for p in preds if p is not None]
    top = max(seen) if seen else 0
    labels = [str(i) if i <= MAX_COUNT else f">{MAX_COUNT}" for i in range(top + 1)]
    cols = [*labels, "none"]
    grid = [[0] * len(cols) for _ in labels]
    for t, p in zip(truths, preds):
        if t is None:
            continue
        grid[t][len(cols) - 1 if p is None else p] += 1
    cell, left, top_px = 22, 40, 40
    width, height = left + cell * len(cols) + 20, top_px + cell * len(labels) + 20
    safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name)
    parts = [f'<svg id="plot-confusion-{escape(safe)}" class="plot plot-confusion" role="img" aria-label="count confusion of {escape(name)}" '
             f'width="{width}" height="{height}" viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg">',
             f'<text x="{left}" y="12" fill="{_color(k)}">{escape(name)}: predicted →</text>',
             f'<text x="10" y="{top_px + 10}" transform="rotate(-90 10 {top_px + 10})" text-anchor="end">truth ↓</text>']  # fmt: skip
    for j, c in enumerate(cols):
        parts.append(f'<text x="{left + cell * j + cell / 2}" y="{top_px - 6}" text-anchor="middle">{escape(c)}</text>')
    for i, row in enumerate(grid):
        total = sum(row) or 1
        y = top_px + cell * i
        parts.append(f'<text x="{left - 6}" y="{y + cell / 2 + 4}" text-anchor="end">{escape(labels[i])}</text>')
        for j, n in enumerate(row):
            share = n / total
            fill = f"rgba(59,111,216,{0.08 + 0.92 * share:.2f})" if n else "#f7f8fa"
            parts.append(f'<rect class="cell" x="{left + cell * j}" y="{y}" width="{cell - 1}" height="{cell - 1}" fill="{fill}">'
                         f"<title>truth {escape(labels[i])}, predicted {escape(cols[j])}: {n}</title></rect>")  # fmt: skip
            if n:
                color = "#fff" if share > 0.5 else "#1d232b"
                parts.append(f'<text x="{left + cell * j + cell / 2 - 0.5}" y="{y + cell / 2 + 3.5}" text-anchor="middle" style="fill:{color}">{n}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _failures(records: Mapping[str, Sequence[Mapping[str, Any]]]) -> str:
    items = []
    for name, rs in records.items():
        failed = [r for r in rs if r.get("status") != "ok"]
        if not failed:
            continue
        lis = "".join(f"<li><code>{escape(str(r['id']))}</code>: {escape(str(r.get('error') or 'failed'))}</li>" for r in failed[:MAX_FAILURES])
        more = f"<li>… and {len(failed) - MAX_FAILURES} more</li>" if len(failed) > MAX_FAILURES else ""
        items.append(f"<h3>{escape(name)}: {len(failed)} failed</h3><ul>{lis}{more}</ul>")
    return '<section id="failures"><h2>Failed items</h2>' + "".join(items) + "</section>" if items else ""


def eval_report_html(
    *,
    fmt: str,
    dataset: str,
    task: str,
    metrics: Sequence[str],
    summaries: Mapping[str, Mapping[str, Any]],
    records: Mapping[str, Sequence[Mapping[str, Any]]],
    comparison: Mapping[str, Any] | None = None,
) -> str:
    """The report page (see the module docstring). ``summaries`` / ``records``: per config, in order;
    ``metrics``: the benchmark's metric names (the first is plotted per category)."""
    names = list(summaries)
    n_items = max((int(s.get("n", 0)) for s in summaries.values()), default=0)
    head = metrics[0] if metrics else ""
    plots = [f"<div><h3>{escape(head)} per category</h3>{_category_plot(summaries, head)}</div>",
             f"<div><h3>Latency distribution</h3>{_latency_plot(records)}</div>"]  # fmt: skip
    confusion = ""
    if task == "count":
        grids = "".join(_confusion_plot(n, records.get(n, []), k) for k, n in enumerate(names))
        confusion = f'<section id="confusion"><h2>Count confusion</h2><div class="plots">{grids}</div></section>'
    body = [
        f"<h1>Evaluation: {escape(fmt)}</h1>",
        f'<p class="meta">dataset <code>{escape(dataset)}</code> · {n_items} items · {len(names)} config{"s" * (len(names) != 1)}</p>',
        f'<section id="results"><h2>Summary</h2>{_summary_table(summaries, metrics)}{_differences_table(comparison or {})}</section>',
        f'<section id="plots"><h2>Plots</h2><div class="plots">{"".join(plots)}</div></section>',
        confusion,
        _failures(records),
    ]
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>visagent eval: {escape(fmt)}</title><style>{CSS}</style></head><body><main>"
        + "".join(body) + "</main></body></html>\n"
    )  # fmt: skip


def write_eval_report(path: str | Path, **kwargs: Any) -> Path:
    """Write ``eval_report_html(**kwargs)`` to ``path`` (parent folders made); returns the path."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(eval_report_html(**kwargs), encoding="utf-8")
    return p
