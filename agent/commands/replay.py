"""``visagent replay TRACE``: re-run a recorded trace with its recorded tool outputs."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from visagent.errors import UsageError


def register(app: typer.Typer) -> None:
    @app.command()
    def replay(
        trace: Annotated[Path, typer.Argument(help="trace file (JSON lines) written by `ask --trace`")],
        planner: Annotated[
            Optional[str],
            typer.Option(
                help="re-plan with this planner (llava, openai, script:PLAN.yaml); recorded outputs serve matching calls"
            ),
        ] = None,
        run: Annotated[
            str,
            typer.Option(
                "--run", metavar="N|last|all", help="which run of a file holding several: N (1 = the first), last, or all"
            ),
        ] = "last",
        as_json: Annotated[
            bool, typer.Option("--json", help="print one JSON object with the outcome (one per run with --run all)")
        ] = False,
        trust_trace_config: Annotated[
            bool,
            typer.Option(
                "--trust-trace-config",
                help="re-plan with the trace's recorded configuration (its checkpoints) instead of the current one",
            ),
        ] = False,
        show: Annotated[
            Optional[Path], typer.Option(help="save the replayed answer's evidence drawn (PNG; .mp4/.webm: cited tracks)")
        ] = None,
        report: Annotated[Optional[Path], typer.Option(help="save an HTML report of the replayed run")] = None,
    ) -> None:
        """Replay TRACE without models: exit 0 if it reaches the recorded answer, 1 where it diverges."""
        from visagent.cli import Exit
        from visagent.trace import read_traces

        which = _parse_run(run)
        n_runs = len(read_traces(trace))
        if which != "all":
            if not _replay_one(trace, which, n_runs, planner, trust_trace_config, as_json, show=show, report=report):
                raise Exit(1)
            return
        if show is not None or report is not None:
            raise UsageError("--show and --report draw one run: use --run N with them, not --run all")
        diverged = [n for n in range(1, n_runs + 1) if not _replay_one(trace, n, n_runs, planner, trust_trace_config, as_json)]
        summary = f"{n_runs - len(diverged)} of {n_runs} runs reached the recorded answer"
        _note(summary + (f"; diverged: run {', '.join(map(str, diverged))}" if diverged else ""))
        if diverged:
            raise Exit(1)


def _parse_run(text: str) -> int | str | None:
    """``--run``: ``last`` -> None, ``all``, or a run number from 1."""
    value = text.strip().lower()
    if value == "last":
        return None
    if value == "all":
        return "all"
    if value.isdigit() and int(value) >= 1:
        return int(value)
    raise UsageError(f"--run takes a run number from 1, last or all, not {text!r}")


def _note(message: str) -> None:
    from visagent.cli import err

    err.print(message, markup=False, highlight=False)


def _replay_one(
    trace: Path, which: int | None, n_runs: int, planner: str | None, trust_trace_config: bool, as_json: bool,
    show: Path | None = None, report: Path | None = None,
) -> bool:  # fmt: skip
    """Replay run ``which`` (None: the last) of ``trace`` and print its outcome; True when it
    reached the recorded answer. Says on stderr which run it is when the file holds several."""
    from visagent.cli import out
    from visagent.replay import replay as run_replay

    if n_runs > 1:
        number = which if which is not None else n_runs
        hint = " (the last; --run N or --run all for the others)" if which is None else ""
        _note(f"replaying run {number} of the {n_runs} runs in {trace}{hint}")
    result = run_replay(trace, planner=planner, trust_trace_config=trust_trace_config, run=which)
    if show is not None:
        from visagent.render import render_answer

        render_answer(result.answer, result.media, show)
    if report is not None:
        from visagent.report import write_report

        write_report(result.answer, result.media, report)
    if as_json:
        sys.stdout.write(json.dumps(result.to_json()) + "\n")
        return result.same
    data = result.to_json()
    how = (
        f"{data['served']} tool outputs served from the trace, {data['ran']} tools run"
        if result.replanned
        else f"{data['served']} tool outputs served from the trace, {data['models_loaded']} models loaded"
    )
    label = f"run {result.run}: " if n_runs > 1 else ""
    if result.same:
        out.print(f"{label}[green]same {_outcome(result)[0]}[/green]: ", end="", highlight=False)
        out.print(f"{_outcome(result)[1]} ({data['steps']} steps; {how})", markup=False, highlight=False)
    else:
        out.print(f"{label}[red]diverged[/red] ({how})", highlight=False)
        out.print(_describe(result.divergence), markup=False, highlight=False)
    if result.renumbered:
        pairs = ", ".join(f"{new} (recorded as {old})" for new, old in result.renumbered.items())
        out.print(
            f"  region ids are the replayed run's, renumbered from the recorded ones: {pairs}", markup=False, highlight=False
        )
    return result.same


def _outcome(result: Any) -> tuple[str, str]:
    """(``answer``, ``'TEXT' citing det_1_0``) or (``result``, ``no answer (status max_steps: ERROR)``)."""
    answer = result.answer
    if not answer.ok or not answer.answer:
        return "result", f"no answer (status {answer.status}" + (f": {answer.error})" if answer.error else ")")
    cited = f" citing {', '.join(e.id for e in answer.evidence)}" if answer.evidence else ""
    return "answer", f"{answer.answer!r}{cited}"


def _describe(div: dict[str, Any] | None) -> str:
    if not div:
        return "  the recorded run did not finish"
    where = f"at step {div['step']}" if div.get("step") is not None else "in the final answer"
    text = f"  {where}:\n    recorded: {json.dumps(div['expected'])}\n    replayed: {json.dumps(div['got'])}"
    for key, label in (("expected_message", "recorded error"), ("got_message", "replayed error")):
        if div.get(key):
            text += f"\n    {label}: {div[key]}"
    return text
