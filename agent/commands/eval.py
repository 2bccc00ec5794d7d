"""``visagent eval``: run benchmarks in their published formats and score predictions files.

``visagent eval run DATASET --format NAME [--config A.yaml --config B.yaml ...]`` answers every item
with every config (in this process: the workers share one model pool; a server named by
``--server`` / ``VISAGENT_SERVER`` is not used), compares the configs paired by item and writes
records, results files, a comparison (JSON, CSV) and an HTML report under ``--out``.
``visagent eval score DATASET --format NAME --predictions FILE`` scores a results file.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from visagent.cli import _App, _Group  # defined before the commands are registered

FormatOpt = Annotated[str, typer.Option("--format", "-f", help="dataset format: countbenchqa, pixmo-count, tallyqa, vqav2, gqa, textvqa, refcoco, refcoco+, refcocog, gta", show_default=False)]
JsonOpt = Annotated[bool, typer.Option("--json", help="print exactly one JSON object (no progress bar)")]


def register(app: typer.Typer) -> None:
    eval_app = _App(
        cls=_Group, name="eval", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
        help="Evaluate on benchmarks (VQAv2, GQA, TextVQA, TallyQA, RefCOCO, ...) with their official metrics.",
    )  # fmt: skip
    app.add_typer(eval_app, name="eval")

    @eval_app.command(name="run")
    def run_cmd(
        dataset: Annotated[Path, typer.Argument(help="folder holding the dataset as published", show_default=False)],
        fmt: FormatOpt,
        configs: Annotated[Optional[list[Path]], typer.Option("--config", "-c", help="YAML config file; repeat to compare configs (each named by its file stem)")] = None,
        profile: Annotated[Optional[str], typer.Option("--profile", "-p", help="profile for every config (default, tiny)")] = None,
        planner: Annotated[Optional[str], typer.Option(help="planner for every config: llava, openai, langchain, or script:PLAN.yaml")] = None,
        max_steps: Annotated[Optional[int], typer.Option("--max-steps", min=1, help="planner steps per question before giving up")] = None,
        limit: Annotated[Optional[int], typer.Option(min=1, help="only the first N items")] = None,
        workers: Annotated[int, typer.Option(min=1, max=64, help="items answered at once (threads sharing one model pool)")] = 1,
        out_dir: Annotated[Path, typer.Option("--out", "-o", help="folder for records, results files, comparison and report")] = Path("eval-out"),
        resume: Annotated[bool, typer.Option(help="skip the items already recorded under --out")] = False,
        baseline: Annotated[Optional[str], typer.Option(help="config the others are compared with (default: the first)")] = None,
        traces: Annotated[bool, typer.Option("--traces", help="also keep each item's trace: OUT/<config>/traces/<id>.jsonl")] = False,
        as_json: JsonOpt = False,
    ) -> None:
        """Answer every item of DATASET with each config; records, comparison and an HTML report."""
        from visagent.cli import EXIT_WRITE, Exit, _load_config, err, out, tiny_note
        from visagent.eval.runner import OutputError, RunSpec, config_names, run_eval

        paths = list(configs or [])
        for p in paths:
            if not p.is_file():
                raise Exit(2, f"config file not found: {p}")
        if paths:
            specs = [RunSpec(name, _load_config(p, profile), planner, str(p)) for name, p in zip(config_names(paths), paths)]
        else:
            specs = [RunSpec("default", _load_config(None, profile), planner, None)]
        names = [s.name for s in specs]
        if baseline is not None and baseline not in names:
            raise Exit(2, f"unknown --baseline {baseline!r}; configs: {', '.join(names)}")
        if any(s.config.profile == "tiny" for s in specs) and not as_json:
            tiny_note()
        progress, on_start, on_record = _progress(err, enabled=not as_json)
        try:
            with progress:
                result = run_eval(dataset, fmt, specs, out_dir, limit=limit, workers=workers, resume=resume, max_steps=max_steps,
                                  traces=traces, baseline=baseline, on_start=on_start, on_record=on_record)  # fmt: skip
        except OutputError as exc:
            raise Exit(EXIT_WRITE, str(exc)) from None
        if as_json:
            import json

            sys.stdout.write(json.dumps(result) + "\n")
        else:
            _print_run(result, out)
        if all(s["failed"] == s["n"] for s in result["configs"].values()):
            first = next((r for rs in _records(result) for r in rs if r.get("error")), None)
            raise Exit(1, "every item failed" + (f"; first error: {first['error']}" if first else ""))

    @eval_app.command(name="score")
    def score_cmd(
        dataset: Annotated[Path, typer.Argument(help="folder holding the dataset as published", show_default=False)],
        fmt: FormatOpt,
        predictions: Annotated[Path, typer.Option("--predictions", help="predictions in the benchmark's own results format", show_default=False)],
        limit: Annotated[Optional[int], typer.Option(min=1, help="only the first N items")] = None,
        as_json: Annotated[bool, typer.Option("--json", help="print exactly one JSON object (summary and per-item metrics)")] = False,
    ) -> None:
        """Score a predictions file with the benchmark's metrics (no model runs)."""
        from visagent.cli import out
        from visagent.eval.runner import json_safe
        from visagent.eval.score import format_table, score_predictions

        summary = score_predictions(dataset.expanduser(), fmt, predictions.expanduser(), limit=limit)
        if as_json:
            import json

            sys.stdout.write(json.dumps(json_safe(summary)) + "\n")
        else:
            out.print(format_table(summary), markup=False, highlight=False)


def _records(result: dict[str, Any]) -> list[list[dict[str, Any]]]:
    from visagent.eval.runner import RECORDS, read_records

    return [read_records(Path(result["out"]) / name / RECORDS) for name in result["configs"]]


def _progress(console: Any, enabled: bool) -> tuple[Any, Any, Any]:
    """A rich progress bar with ETA per config (on stderr), and the runner's callbacks feeding it."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    progress = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[failed]} failed"),
        TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=console, disable=not enabled,
    )  # fmt: skip
    tasks: dict[str, Any] = {}
    failed: dict[str, int] = {}
    lock = threading.Lock()

    def on_start(name: str, total: int, resumed: int) -> None:
        label = f"{name} ({resumed} resumed)" if resumed else name
        tasks[name] = progress.add_task(label, total=total, failed=0)
        failed[name] = 0

    def on_record(name: str, record: dict[str, Any]) -> None:  # called from the worker threads
        with lock:
            failed[name] += record.get("status") != "ok"
            progress.update(tasks[name], advance=1, failed=failed[name])

    return progress, on_start, on_record


def _print_run(result: dict[str, Any], out: Any) -> None:
    from rich.table import Table

    from visagent.eval.compare import comparison_table

    title = f"{result['format']}: {result['items']} item{'s' * (result['items'] != 1)} ({result['dataset']})"
    out.print(comparison_table(result["comparison"], title=title))
    metrics = result["metrics"]
    for name, s in result["configs"].items():
        cats = s.get("categories") or {}
        if not cats:
            continue
        table = Table(title=f"{name}: per category")
        table.add_column("category")
        table.add_column("n", justify="right")
        for m in metrics:
            table.add_column(m, justify="right")
        table.add_column("p50 ms", justify="right")
        for cat, c in cats.items():
            vals = [("-" if c.get(m) is None else f"{c[m]:.3f}") for m in metrics]
            table.add_row(cat, str(c.get("n", 0)), *vals, f"{(c.get('latency_ms') or {}).get('p50', 0):.0f}")
        out.print(table)
    out.print(f"records, results and summaries in {result['out']}; report {result['report']}", markup=False, highlight=False)
