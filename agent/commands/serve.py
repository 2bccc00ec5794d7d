"""``visagent serve``: the HTTP API (FastAPI + uvicorn) over one shared agent."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Optional

import typer


def serve(
    host: Annotated[Optional[str], typer.Option(help="address to listen on (default 127.0.0.1; anything else needs a token)")] = None,
    port: Annotated[Optional[int], typer.Option(min=0, max=65535, help="port (default 8000)")] = None,
    token: Annotated[Optional[str], typer.Option(help="bearer token required on /v1 routes (or env VISAGENT_TOKEN)")] = None,
    profile: Annotated[Optional[str], typer.Option("--profile", "-p", help="default (real checkpoints) or tiny")] = None,
    config: Annotated[Optional[Path], typer.Option("--config", "-c", help="YAML config file (its server: section sets the limits)")] = None,
    planner: Annotated[Optional[str], typer.Option(help="llava, openai, langchain, or script:PLAN.yaml (each request replays the plan)")] = None,
    allow_root: Annotated[Optional[list[str]], typer.Option("--allow-root", help="folder whose files JSON requests may name by path (repeatable)")] = None,
    max_concurrency: Annotated[Optional[int], typer.Option("--max-concurrency", min=1, help="runs at once (default 2)")] = None,
    max_queue: Annotated[Optional[int], typer.Option("--max-queue", min=0, help="requests waiting for a slot before 429 (default 16)")] = None,
    timeout: Annotated[Optional[float], typer.Option("--timeout", min=0.001, help="seconds per request before 504 (default 300)")] = None,
    trace_dir: Annotated[Optional[Path], typer.Option("--trace-dir", help="write each request's trace (and copies of its inputs) here, for `visagent replay`")] = None,
    ui: Annotated[bool, typer.Option("--ui", help="also serve the web page at /ui (the ui extra; or config server.ui: true)")] = False,
    log_level: Annotated[str, typer.Option("--log-level", help="uvicorn log level")] = "warning",
    detach: Annotated[bool, typer.Option("--detach", "-d", help="run in the background (stop it with `visagent stop`)")] = False,
    allow_missing: Annotated[
        bool, typer.Option("--allow-missing", help="start even when configured checkpoints cannot be had (their requests fail)")
    ] = False,
    ray: Annotated[
        bool, typer.Option("--ray", help="scale out on Ray Serve: each model family a deployment (config ray:; the ray extra; docs/scaling.md)")
    ] = False,
) -> None:
    """Serve the agent over HTTP: POST /v1/ask, /v1/ask/stream; GET /v1/tools, /v1/models, /healthz."""
    from visagent.cli import TINY_NOTE, _load_config, err
    from visagent.server import is_loopback, load_settings

    if detach:
        given = {
            "--host": host, "--port": port, "--profile": profile, "--config": config, "--planner": planner,
            "--max-concurrency": max_concurrency, "--max-queue": max_queue, "--timeout": timeout, "--trace-dir": trace_dir,
            "--log-level": log_level,
        }  # fmt: skip
        args = [item for flag, value in given.items() if value is not None for item in (flag, str(value))]
        args += [item for root in allow_root or [] for item in ("--allow-root", root)]
        args += ["--ui"] if ui else []
        args += ["--allow-missing"] if allow_missing else []
        args += ["--ray"] if ray else []
        from visagent.daemon import start_detached

        start_detached(args, _load_config(config, profile), token=token, host=host, port=port)
        return

    cfg = _load_config(config, profile)
    settings = load_settings(
        cfg,
        host=host,
        port=port,
        token=token,
        allowed_roots=list(allow_root) if allow_root else None,
        max_concurrency=max_concurrency,
        max_queue=max_queue,
        timeout_s=timeout,
        trace_dir=str(trace_dir) if trace_dir is not None else None,
        ui=ui or None,
    )
    if not is_loopback(settings.host) and not settings.token:
        from visagent.errors import UsageError

        raise UsageError(
            f"refusing to listen on {settings.host} without a token: pass --token (or set VISAGENT_TOKEN), or use --host 127.0.0.1",
        )
    from visagent.agent import Agent
    from visagent.server import serve as run_server

    if ray:
        from visagent import ray_serve  # without the extra: a one-line error naming it

        ray_serve.check_ray_config(cfg)  # a bad ray: section fails before anything starts
    if cfg.profile == "tiny":
        err.print(f"note: {TINY_NOTE}", markup=False)
    agent = Agent(cfg, planner=planner)
    _ = agent.planner  # an unknown planner or a bad plan file fails here, before listening
    # on a Ray cluster the replicas' machines hold the checkpoints, not this one: they check at start
    missing = [] if ray and cfg.ray.address else missing_checkpoints(cfg, uses_planner_model=str(getattr(agent.planner, "name", "")).startswith("llava"))
    if missing:
        from visagent.checkpoints import hub_why

        paths = [reason for _, _, reason in missing if reason.startswith("checkpoint for ")]
        hub = [f"{family} ({checkpoint})" for family, checkpoint, reason in missing if not reason.startswith("checkpoint for ")]
        parts = paths + (
            [
                f"{', '.join(hub)} {hub_why().replace('is not', 'are not' if len(hub) > 1 else 'is not')}: get each with "
                "`hf download ID` on a machine with access and copy its ~/.cache/huggingface here, "
                "or set models.<family>.checkpoint to a local folder holding it"
            ]
            if hub
            else []
        )
        listed = "; ".join(parts)
        if not allow_missing:
            from visagent.errors import ModelUnavailableError

            raise ModelUnavailableError(
                f"not serving: {listed}; or try the pipeline with --profile tiny, or pass --allow-missing to serve anyway "
                "(requests needing them fail)"
            )
        err.print(f"warning: serving without these checkpoints (--allow-missing): {listed}", markup=False, highlight=False)
    auth = "bearer token required" if settings.token else "no auth (loopback only)"
    page = "; web page at /ui" + (" (open it once as /ui?token=TOKEN)" if settings.token else "") if settings.ui else ""
    logging.getLogger("visagent").setLevel(logging.INFO if log_level in ("info", "debug") else logging.WARNING)
    if ray:
        _serve_on_ray(cfg, settings, planner, auth, page)
        return
    err.print(f"visagent serving on http://{settings.host}:{settings.port} ({auth}); docs at /docs{page}", markup=False)
    run_server(agent, settings, log_level=log_level)


def _serve_on_ray(cfg: object, settings: object, planner: Optional[str], auth: str, page: str) -> None:
    """``visagent serve --ray``: deploy on Ray Serve and serve until Ctrl-C (``visagent.ray_serve``)."""
    from visagent import ray_serve
    from visagent.cli import err

    rc = cfg.ray  # type: ignore[attr-defined]
    where = f"the Ray cluster at {rc.address}" if rc.address else "a local Ray instance"
    err.print(f"starting on {where}: deployments {', '.join(ray_serve.served_families(cfg)) or 'none'} + ingress ...", markup=False)  # type: ignore[arg-type]

    def ready(host: str, port: int) -> None:
        err.print(f"visagent serving on Ray Serve at http://{host}:{port} ({auth}); docs at /docs{page}; Ctrl-C stops it", markup=False)

    ray_serve.serve_ray(cfg, settings, planner=planner, ready=ready)  # type: ignore[arg-type]


def missing_checkpoints(cfg: object, uses_planner_model: bool = True) -> list[tuple[str, str, str]]:
    """``(family, checkpoint, reason)`` per configured checkpoint that cannot be loaded now
    (``checkpoints.missing_reason``); the ``planner`` family only counts when the planner loads it."""
    from visagent.checkpoints import missing_reason

    out = []
    for family, mc in cfg.models.items():  # type: ignore[attr-defined]
        if family == "planner" and not uses_planner_model:
            continue
        reason = missing_reason(mc.checkpoint, family=family, revision=mc.revision)
        if reason is not None:
            out.append((family, mc.checkpoint, reason))
    return out


def stop(
    port: Annotated[Optional[int], typer.Option(min=0, max=65535, help="the server's port (default: every detached server)")] = None,
    profile: Annotated[Optional[str], typer.Option("--profile", "-p", help="profile whose cache folder holds the pid files")] = None,
    config: Annotated[Optional[Path], typer.Option("--config", "-c", help="YAML config file (its cache_dir holds the pid files)")] = None,
) -> None:
    """Stop servers started with `visagent serve --detach`."""
    from visagent.cli import _load_config
    from visagent.daemon import stop_detached

    stop_detached(_load_config(config, profile), port)


def register(app: typer.Typer) -> None:
    app.command(name="serve")(serve)
    app.command(name="stop")(stop)
