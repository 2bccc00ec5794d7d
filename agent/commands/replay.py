"""``visagent replay TRACE``: re-run a recorded trace with its recorded tool outputs."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command()
    def replay(
        trace: Annotated[Path, typer.Argument(help="trace file (JSON lines) written by `ask --trace`")],
        planner: Annotated[
            Optional[str],
            typer.Option(help="re-plan with this planner (llava, openai, script:PLAN.yaml); recorded outputs serve matching calls"),
        ] = None,
        as_json: Annotated[bool, typer.Option("--json", help="print one JSON object with the outcome")] = False,
        trust_trace_config: Annotated[
            bool, typer.Option("--trust-trace-config", help="re-plan with the trace's recorded configuration (its checkpoints) instead of the current one")
        ] = False,
        show: Annotated[Optional[Path], typer.Option(help="save the replayed answer's evidence drawn (PNG)")] = None,
        report: Annotated[Optional[Path], typer.Option(help="save an HTML report of the replayed run")] = None,
    ) -> None:
        """Replay TRACE without models: exit 0 if it reaches the recorded answer, 1 where it diverges."""
        from visagent.cli import Exit, out
        from visagent.replay import replay as run_replay

        result = run_replay(trace, planner=planner, trust_trace_config=trust_trace_config)
        if show is not None or report is not None:
            media = result.media
            if show is not None:
                from visagent.render import render_answer

                render_answer(result.answer, media, show)
            if report is not None:
                from visagent.report import write_report

                write_report(result.answer, media, report)
        if as_json:
            sys.stdout.write(json.dumps(result.to_json()) + "\n")
        else:
            data = result.to_json()
            how = (
                f"{data['served']} tool outputs served from the trace, {data['ran']} tools run"
                if result.replanned
                else f"{data['served']} tool outputs served from the trace, {data['models_loaded']} models loaded"
            )
            if result.same:
                out.print(f"[green]same answer[/green]: {data['answer']!r} ({data['steps']} steps; {how})")
            else:
                out.print(f"[red]diverged[/red] ({how})")
                out.print(_describe(result.divergence), markup=False)
        if not result.same:
            raise Exit(1)


def _describe(div: dict[str, Any] | None) -> str:
    if not div:
        return "  the recorded run did not finish"
    where = f"at step {div['step']}" if div.get("step") is not None else "in the final answer"
    text = f"  {where}:\n    recorded: {json.dumps(div['expected'])}\n    replayed: {json.dumps(div['got'])}"
    for key, label in (("expected_message", "recorded error"), ("got_message", "replayed error")):
        if div.get(key):
            text += f"\n    {label}: {div[key]}"
    return text
