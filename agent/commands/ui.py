"""``visagent ui``: the web page (Gradio) for people who would rather look; see ``visagent.ui``."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Optional

import typer


def ui(
    host: Annotated[Optional[str], typer.Option(help="address to listen on (default 127.0.0.1; anything else needs a token)")] = None,
    port: Annotated[Optional[int], typer.Option(min=0, max=65535, help="port (default 7860)")] = None,
    token: Annotated[Optional[str], typer.Option(help="token the page asks for (or env VISAGENT_TOKEN): open it as /?token=TOKEN once")] = None,
    profile: Annotated[Optional[str], typer.Option("--profile", "-p", help="default (real checkpoints) or tiny")] = None,
    config: Annotated[Optional[Path], typer.Option("--config", "-c", help="YAML config file (its server: section sets the limits)")] = None,
    planner: Annotated[Optional[str], typer.Option(help="llava, openai, langchain, or script:PLAN.yaml (a list of plans: one per turn)")] = None,
    log_level: Annotated[str, typer.Option("--log-level", help="uvicorn log level")] = "warning",
) -> None:
    """Serve the web page: upload images and videos, ask, watch the steps, see the evidence drawn."""
    from visagent.cli import TINY_NOTE, _load_config, err
    from visagent.server import load_settings
    from visagent.ui import DEFAULT_PORT, _gradio, check_exposure, serve_ui

    cfg = _load_config(config, profile)
    settings = load_settings(cfg, host=host, port=DEFAULT_PORT if port is None else port, token=token)
    check_exposure(settings)
    _gradio()  # the ui extra is installed, or a one-line error
    from visagent.agent import Agent

    if cfg.profile == "tiny":
        err.print(f"note: {TINY_NOTE}", markup=False)
    agent = Agent(cfg, planner=planner)
    _ = agent.planner  # an unknown planner or a bad plan file fails here, before listening
    auth = "token required: open it once as /?token=TOKEN" if settings.token else "no auth (loopback only)"
    err.print(f"visagent web page on http://{settings.host}:{settings.port}/ ({auth})", markup=False)
    logging.getLogger("visagent").setLevel(logging.INFO if log_level in ("info", "debug") else logging.WARNING)
    serve_ui(agent, settings, log_level=log_level, configure=lambda name: _load_config(config, name), planner=planner)


def register(app: typer.Typer) -> None:
    app.command(name="ui")(ui)
