"""``visagent chat MEDIA...``: an interactive multi-turn session on the terminal.

Each line typed is a question about the media; follow-ups may refer to earlier ids ("segment
det_1_1"). Commands: ``/add PATH`` adds an image or video, ``/ids`` lists the region ids so far,
``/quit`` (or end of input) leaves. Final answers go through the grounded-final checks.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from visagent.cli import LocalOpt, ServerOpt  # defined before the commands are registered


def register(app: typer.Typer) -> None:
    @app.command()
    def chat(
        media: Annotated[list[str], typer.Argument(help="images / videos / sample:NAME to talk about", show_default=False)],
        profile: Annotated[Optional[str], typer.Option("--profile", "-p", help="default or tiny")] = None,
        config: Annotated[Optional[Path], typer.Option("--config", "-c", help="YAML config file")] = None,
        planner: Annotated[Optional[str], typer.Option(help="llava, openai, langchain, or script:PLAN.yaml")] = None,
        max_steps: Annotated[Optional[int], typer.Option("--max-steps", min=1, help="planner steps per question")] = None,
        trace_dir: Annotated[Optional[Path], typer.Option(help="write each turn's trace as turn-N.jsonl here")] = None,
        verbose: Annotated[bool, typer.Option("--verbose", "-v", help="print each step as it happens")] = False,
        server: ServerOpt = None,
        local: LocalOpt = False,
    ) -> None:
        """Ask questions about MEDIA one after another, keeping earlier evidence referable."""
        from visagent.cli import _Activity, _announce_load, _load_config, _print_answer, err, find_remote, out, tiny_note
        from visagent.types import describe_step

        cfg = _load_config(config, profile)
        remote = find_remote(server, local, profile, config, planner, cfg)
        if (remote.profile if remote is not None else cfg.profile) == "tiny":
            tiny_note()
        if remote is not None:  # the server keeps the session: its ids stay citable turn after turn
            conv: Any = remote.chat(media, max_steps=max_steps, limits=cfg.limits)
            from visagent.client import plans_of

            scripted = plans_of(planner)  # sent with each turn: plan k for turn k
        else:
            from visagent.agent import Agent

            agent = Agent(cfg, planner=planner)
            if err.is_terminal:
                agent.pool.add_listener(_announce_load)
            conv = agent.chat(media, max_steps=max_steps)
            scripted = None
        if trace_dir is not None:
            trace_dir.mkdir(parents=True, exist_ok=True)
        ids = ", ".join(conv.media.ids())
        err.print(f"media: {ids}. Type a question; /add PATH, /ids, /quit.")
        while True:
            try:
                line = input("? " if sys.stdin.isatty() else "")
            except EOFError:
                break
            line = line.strip()
            if not line:
                continue
            if line in ("/quit", "/exit", "/q"):
                break
            if line == "/ids":
                out.print(", ".join(conv.regions) or "no region ids yet", markup=False)
                continue
            if line.startswith("/add "):
                from visagent.errors import MediaError

                try:
                    out.print(f"added {conv.add_media(line[5:].strip())}")
                except MediaError as exc:
                    err.print(f"error: {exc}", markup=False)
                continue
            trace = trace_dir / f"turn-{len(conv.turns) + 1}.jsonl" if trace_dir is not None else None
            with _Activity(enabled=err.is_terminal and not verbose) as activity:
                extra = {"plan": scripted[min(len(conv.turns), len(scripted) - 1)]} if scripted else {}
                run = conv.stream(line, trace_path=trace, progress=activity.progress, **extra)
                for step in run:
                    if verbose:
                        err.print(describe_step(step), markup=False)
                    activity.follow(step)
            assert run.answer is not None  # the session recorded the turn
            _print_answer(run.answer)
            if not run.answer.ok:
                err.print(f"no answer: {run.answer.error}", markup=False)
