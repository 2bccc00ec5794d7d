"""``visagent mcp``: the MCP server over stdio (for desktop assistants, IDEs, agent frameworks)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer


def mcp(
    profile: Annotated[Optional[str], typer.Option("--profile", "-p", help="default (real checkpoints) or tiny")] = None,
    config: Annotated[Optional[Path], typer.Option("--config", "-c", help="YAML config file")] = None,
    planner: Annotated[Optional[str], typer.Option(help="planner of the ask tool: llava, openai, langchain, or script:PLAN.yaml")] = None,
    allow_root: Annotated[
        Optional[list[str]], typer.Option("--allow-root", help="folder that paths in tool arguments must lie in (repeatable; default: any path)")
    ] = None,
    images: Annotated[bool, typer.Option("--images/--no-images", help="return the regions drawn on the image as image content")] = True,
) -> None:
    """Serve the tools and the whole agent (the `ask` tool) over MCP on stdin / stdout."""
    import anyio

    from visagent.agent import Agent
    from visagent.cli import _load_config
    from visagent.mcp_server import serve_stdio

    overrides = {"limits": {"allowed_roots": list(allow_root)}} if allow_root else {}
    cfg = _load_config(config, profile, overrides)
    agent = Agent(cfg, planner=planner)
    _ = agent.planner  # an unknown planner or a bad plan file fails here, before serving
    anyio.run(lambda: serve_stdio(agent, images=images))


def register(app: typer.Typer) -> None:
    app.command(name="mcp")(mcp)
