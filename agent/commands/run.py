"""``visagent run PATH...``: run scenario files as a suite (results as JSON lines)."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from visagent.cli import LocalOpt, ServerOpt  # defined before the commands are registered


def register(app: typer.Typer) -> None:
    @app.command(name="run")
    def run_cmd(
        paths: Annotated[list[Path], typer.Argument(help="scenario files or folders (*.yaml)", show_default=False)],
        out_path: Annotated[Path, typer.Option("--out", "-o", help="results file, one JSON line per scenario")] = Path("results.jsonl"),
        profile: Annotated[Optional[str], typer.Option("--profile", "-p", help="profile for scenarios that name none (default, tiny)")] = None,
        config: Annotated[Optional[Path], typer.Option("--config", "-c", help="YAML config file")] = None,
        planner: Annotated[Optional[str], typer.Option(help="planner for scenarios without a scripted plan")] = None,
        workers: Annotated[int, typer.Option(min=1, max=64, help="scenarios run at once (threads sharing one model pool)")] = 1,
        resume: Annotated[bool, typer.Option(help="skip scenarios already in the results file")] = False,
        junit: Annotated[Optional[Path], typer.Option(help="also write a JUnit XML report")] = None,
        select: Annotated[Optional[str], typer.Option("--select", "-k", help="only scenarios whose id contains this text")] = None,
        server: ServerOpt = None,
        local: LocalOpt = False,
    ) -> None:
        """Run scenarios; exit 1 if any failed, 2 for an invalid scenario file."""
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        from visagent.cli import EXIT_WRITE, TINY_NOTE, Exit, err, out
        from visagent.scenarios import ScenarioRunner, load_scenarios, read_results, write_junit
        from visagent.secrets import scrub

        scenarios = load_scenarios(paths)
        if select:
            scenarios = [s for s in scenarios if select in s.id]
        ids = [s.id for s in scenarios]
        if len(set(ids)) != len(ids):
            dup = next(i for i in ids if ids.count(i) > 1)
            raise Exit(2, f"scenario {dup} is listed twice")
        previous: dict[str, dict[str, Any]] = {}
        if resume:  # scenarios are matched by absolute file and content (``key``), not by the id's relative path
            by_key = {s.key: s.id for s in scenarios}
            previous = {by_key[r["key"]]: {**r, "id": by_key[r["key"]]} for r in read_results(out_path) if r.get("key") in by_key}
            _rewrite_complete(out_path)
        elif out_path.exists():
            out_path.unlink()
        todo = [s for s in scenarios if s.id not in previous]
        if profile == "tiny" and any(s.profile is None for s in todo):
            err.print(f"[yellow]note:[/yellow] {TINY_NOTE}")
        from visagent.client import find_server

        # a running server answers the scenarios whose profile and planner it runs; the others run here
        runner = ScenarioRunner(profile=profile, config_path=config, planner=planner, server=find_server(server, local=local))
        try:
            out_path.parent.mkdir(parents=True, exist_ok=True)
            results_file = out_path.open("a", encoding="utf-8")
        except OSError as exc:
            raise Exit(EXIT_WRITE, f"cannot write {out_path}: {exc.strerror or exc}") from None
        lock = threading.Lock()
        new: dict[str, dict[str, Any]] = {}
        with results_file as fh, Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=err,
            transient=False, disable=not todo,
        ) as progress:  # fmt: skip
            task = progress.add_task(f"scenarios ({len(previous)} resumed)" if previous else "scenarios", total=len(todo))

            def one(sc: Any) -> None:
                result = runner.run(sc)
                with lock:
                    fh.write(scrub(json.dumps(result, default=str)) + "\n")
                    fh.flush()
                    new[sc.id] = result
                    mark = "skip" if result["skipped"] else ("ok" if result["passed"] else "FAIL")
                    progress.update(task, advance=1, description=f"{mark:4s} {sc.name}")

            if workers == 1:
                for sc in todo:
                    one(sc)
            else:
                from concurrent.futures import ThreadPoolExecutor

                with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="visagent-scenario") as pool:
                    for f in [pool.submit(one, sc) for sc in todo]:
                        f.result()
        results = [new.get(i) or previous[i] for i in ids]
        _print_summary(results, out)
        if junit is not None:
            try:
                write_junit(results, junit)
            except OSError as exc:
                raise Exit(EXIT_WRITE, f"cannot write {junit}: {exc.strerror or exc}") from None
        if any(not r["skipped"] and not r["passed"] for r in results):
            raise Exit(1)


def _rewrite_complete(path: Path) -> None:
    """Drop a last line cut off by a kill so appended results stay one per line."""
    if not path.is_file():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        keep = data[: data.rfind(b"\n") + 1]
        path.write_bytes(keep)


def _print_summary(results: list[dict[str, Any]], out: Any) -> None:
    from rich.table import Table

    from visagent.scenarios import failure_text, summarize

    s = summarize(results)
    for r in results:
        if not r["skipped"] and not r["passed"]:
            out.print(failure_text(r), markup=False, highlight=False)
    skipped = [r for r in results if r["skipped"]]
    for r in skipped:
        out.print(f"skipped {r['id']}: {r['skipped']}", markup=False, highlight=False)
    table = Table(title=f"{s['passed']} passed, {s['failed']} failed, {s['skipped']} skipped of {s['total']} scenarios")
    table.add_column("expectation")
    table.add_column("passed", justify="right")
    table.add_column("accuracy", justify="right")
    for kind, (ok, total) in s["kinds"].items():
        table.add_row(kind, f"{ok}/{total}", f"{ok / total:.0%}" if total else "-")
    table.caption = f"latency p50 {s['p50_ms']:.0f} ms, p95 {s['p95_ms']:.0f} ms"
    out.print(table)
