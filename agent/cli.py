"""The ``visagent`` command line.

Exit codes: 0 answered, 1 the run failed (no answer), 2 bad input or usage (one line on stderr).
Heavy libraries (torch, transformers) are imported only by the commands that need them, so
``visagent --help`` stays fast.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import pkgutil
import sys
from functools import partial
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperCommand, TyperGroup

from visagent.secrets import install_log_filter, scrub
from visagent.types import describe_step


class _FlagsTakeNoValue:
    """typer's rich help shows a flag's Python type (``--json <bool>``) although a flag takes no
    value; flags here show none (``--json``), like click's plain help."""

    def get_params(self, ctx: Any) -> list[Any]:
        params = super().get_params(ctx)  # type: ignore[misc]
        for param in params:
            if getattr(param, "is_flag", False) and param.metavar is None:
                param.metavar = ""
        return params


class _Command(_FlagsTakeNoValue, TyperCommand):
    pass


class _Group(_FlagsTakeNoValue, TyperGroup):
    pass


class _App(typer.Typer):
    """``typer.Typer`` whose commands (here and in ``visagent.commands``) show flags as flags."""

    def command(self, *args: Any, cls: Any = None, **kwargs: Any) -> Any:
        return super().command(*args, cls=cls or _Command, **kwargs)


app = _App(
    cls=_Group,
    name="visagent",
    help="Ask questions about images and videos; get answers grounded in boxes, masks and text.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            sys.stdout.write(f"visagent {version('visagent')}\n")
        except PackageNotFoundError:  # pragma: no cover - run from a tree that is not installed
            sys.stdout.write("visagent (not installed)\n")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="print the version and exit")] = False,
) -> None:
    """Ask questions about images and videos; get answers grounded in boxes, masks and text."""


# Piped or redirected output (no terminal, no COLUMNS) gets wide tables instead of rich's 80 columns.
_PIPE_WIDTH = None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 160
out = Console(soft_wrap=True, width=_PIPE_WIDTH)
err = Console(stderr=True, soft_wrap=True)

TINY_NOTE = (
    "profile 'tiny': tiny random checkpoints of the real architectures — the pipeline is real, "
    "the answers are meaningless (OCR excepted: its real weights ship with it). Use --profile default "
    "with real checkpoints (see README: Models)."
)


def tiny_note() -> None:
    """Say that the tiny profile's answers are meaningless (on stderr), unless ``VISAGENT_QUIET_TINY=1``
    (a script's later commands, e.g. the second command of ``make demo``, after the note was shown once)."""
    if os.environ.get("VISAGENT_QUIET_TINY", "").strip().lower() in ("1", "true", "yes", "on"):
        return
    err.print(f"[yellow]note:[/yellow] {TINY_NOTE}")


class Exit(Exception):
    def __init__(self, code: int, message: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def fail_usage(message: str) -> None:
    raise Exit(2, message)


def _load_config(config: Optional[Path], profile: Optional[str], overrides: dict[str, Any] | None = None) -> Any:
    from visagent.config import load_config

    return load_config(config, profile=profile, overrides=overrides or {})


ProfileOpt = Annotated[Optional[str], typer.Option("--profile", "-p", help="default (real checkpoints) or tiny (random tiny models)")]
ConfigOpt = Annotated[Optional[Path], typer.Option("--config", "-c", help="YAML config file")]
ServerOpt = Annotated[
    Optional[str],
    typer.Option("--server", help="answer with the visagent server at URL (env VISAGENT_SERVER; default: one on 127.0.0.1:8000 if running)"),
]
LocalOpt = Annotated[bool, typer.Option("--local", help="run in this process even when a server is running")]


def find_remote(server: Optional[str], local: bool, profile: Optional[str], config: Optional[Path], planner: Optional[str], cfg: Any) -> Any:
    """The server that answers this command (see ``visagent.client``), or None to run in-process.
    A profile counts as asked for when ``--profile``, ``--config`` or ``VISAGENT_PROFILE`` names one."""
    from visagent.client import find_server, plans_of

    asked = cfg.profile if (profile or config is not None or os.environ.get("VISAGENT_PROFILE")) else None
    return find_server(server, local=local, profile=asked, planner=planner, plans=lambda: plans_of(planner) or ())


@app.command()
def ask(
    args: Annotated[list[str], typer.Argument(help="MEDIA... QUESTION: image/video paths or sample:NAME, then the question", show_default=False)],
    profile: ProfileOpt = None,
    config: ConfigOpt = None,
    planner: Annotated[Optional[str], typer.Option(help="llava, openai, langchain, or script:PLAN.yaml")] = None,
    max_steps: Annotated[Optional[int], typer.Option("--max-steps", min=1, help="planner steps before giving up (default 8)")] = None,
    trace: Annotated[Optional[Path], typer.Option(help="append the trace as JSON lines while the run goes")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print exactly one JSON object: answer, evidence, trace")] = False,
    show: Annotated[
        Optional[Path], typer.Option(help="save the image(s) with the cited evidence drawn (PNG; .mp4/.webm: the cited tracks' video)")
    ] = None,
    report: Annotated[Optional[Path], typer.Option(help="save a self-contained HTML report of the run")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="print each step as it happens")] = False,
    server: ServerOpt = None,
    local: LocalOpt = False,
) -> None:
    """Answer QUESTION about MEDIA (images, videos, sample:NAME)."""
    if len(args) < 2:
        fail_usage("ask needs at least one media input and a question: visagent ask IMAGE... QUESTION")
    *media, question = args
    cfg = _load_config(config, profile)
    remote = find_remote(server, local, profile, config, planner, cfg)
    if (remote.profile if remote is not None else cfg.profile) == "tiny":
        tiny_note()
    if remote is not None:
        from visagent.client import plan_of

        start = partial(remote.stream, plan=plan_of(planner), limits=cfg.limits)
    else:
        from visagent.agent import Agent

        agent = Agent(cfg, planner=planner)
        if err.is_terminal:  # a real checkpoint takes a while to load: say what is happening
            agent.pool.add_listener(_announce_load)
        start = agent.stream
    with _Activity(enabled=err.is_terminal and not verbose) as activity:
        run = start(question, media, trace_path=trace, max_steps=max_steps, progress=activity.progress)
        for step in run:
            if verbose:
                err.print(describe_step(step), markup=False, highlight=False)
            activity.follow(step)
    answer = run.answer
    assert answer is not None
    problems = [run.writer.error] if run.writer is not None and run.writer.error else []
    for path, write in ((show, _write_show), (report, _write_report)):
        if path is not None:
            try:
                write(answer, run.media, path)
            except OSError as exc:  # the answer is printed all the same
                problems.append(f"cannot write {path}: {exc.strerror or exc}")
    if as_json:
        sys.stdout.write(scrub(answer.model_dump_json()) + "\n")
    else:
        _print_answer(answer)
    for problem in problems:
        err.print(f"error: {scrub(problem)}", markup=False, highlight=False)
    if not answer.ok:
        if not as_json:
            err.print(f"[red]no answer:[/red] {escape(answer.error or '')}")
        raise Exit(1)
    if problems:
        raise Exit(EXIT_WRITE)


def _announce_load(event: str, key: Any, info: dict[str, Any]) -> None:
    what = f"{key.family} model {key.checkpoint.split('#')[0]} on {key.device}"
    if event == "loading":
        err.print(f"[dim]loading {what} ...[/dim]", highlight=False)
    elif event == "loaded":
        err.print(f"[dim]loaded {what} in {info['ms'] / 1000:.1f} s ({info['bytes'] / 1e6:.1f} MB)[/dim]", highlight=False)


class _Activity:
    """What a run is doing, shown on a terminal as one transient status line that follows the
    steps ("planning ...", "running detect ...", "embedding gallery: 64/640"); it disappears when
    the run ends. Without a terminal only long work reports progress, a line per update."""

    def __init__(self, enabled: bool) -> None:
        self.status = err.status("planning ...", spinner="dots") if enabled else None

    def __enter__(self) -> _Activity:
        if self.status is not None:
            self.status.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.status is not None:
            self.status.stop()

    def follow(self, step: Any) -> None:
        if self.status is None:
            return
        if step.type == "planner" and step.action.kind == "action":
            self.status.update(f"running {step.action.tool} ...")
        elif step.type != "final":
            self.status.update("planning ...")

    def progress(self, message: str, done: int, total: int) -> None:
        if not total:
            return
        if self.status is not None:
            self.status.update(f"{message}: {done}/{total}")
        elif done == total or done * 10 // total > (done - 1) * 10 // total:  # every 10% in logs
            err.print(f"{message}: {done}/{total}", highlight=False)


#: exit code when the answer was printed but an output file (--trace, --show, --report, --out) was not written
EXIT_WRITE = 3


def _write_show(answer: Any, media: Any, path: Path) -> None:
    from visagent.render import render_answer

    render_answer(answer, media, path)


def _write_report(answer: Any, media: Any, path: Path) -> None:
    from visagent.report import write_report

    write_report(answer, media, path)


def _print_answer(answer: Any) -> None:
    if answer.ok:
        out.print(f"[bold]{escape(answer.answer)}[/bold]", highlight=False)  # model text: brackets are text, not markup
    for warning in answer.warnings:
        out.print(f"[yellow]warning:[/yellow] {escape(warning)}")
    if answer.evidence:
        out.print("evidence:")
        for ev in answer.evidence:
            out.print(f"  {ev.describe()}", markup=False, highlight=False)
    n_tools = len(answer.trace.tool_steps())
    n_steps = sum(1 for s in answer.trace.steps if s.type == "planner")  # planner steps: notes and errors are not steps
    counts = f"{n_steps} step{'s' * (n_steps != 1)}, {n_tools} tool call{'s' * (n_tools != 1)}"
    out.print(f"[dim]{counts}, {answer.trace.meta.ms or 0:.0f} ms[/dim]")


@app.command()
def tools(as_json: Annotated[bool, typer.Option("--json", help="JSON list of {name, description, input_schema, origin}")] = False) -> None:
    """List the tools (built-in and plugins) with their descriptions, input schemas and origin."""
    from visagent.registry import load_tools, tool_origins

    # each skipped plugin: one line here, not a log line as well
    registry = load_tools(report=lambda problem: err.print(f"warning: {problem}", markup=False, highlight=False))
    origins = tool_origins()
    if as_json:
        sys.stdout.write(json.dumps([{**t.spec(), "origin": origins.get(n, "builtin")} for n, t in registry.items()], indent=2) + "\n")
        return
    for name, tool in registry.items():
        origin = origins.get(name, "builtin")
        out.print(f"{tool.signature()}", style="bold", markup=False, highlight=False)
        out.print(f"    {tool.description}" + ("" if origin == "builtin" else f"\n    from {origin}"), markup=False, highlight=False)


@app.command()
def samples(
    names: Annotated[Optional[list[str]], typer.Argument(help="sample names (default: all)", show_default=False)] = None,
    save: Annotated[Optional[Path], typer.Option("--save", help="write each as NAME.png into this folder")] = None,
) -> None:
    """List the bundled sample images (use them as sample:NAME), or save them as PNG files."""
    from visagent.media import SAMPLES, sample_image

    chosen = list(names or SAMPLES)
    unknown = [n for n in chosen if n not in SAMPLES]
    if unknown:
        fail_usage(f"unknown sample {unknown[0]!r}; available: {', '.join(SAMPLES)}")
    if save is None:
        for name in chosen:
            out.print(f"sample:{name}", markup=False, highlight=False)
        return
    try:
        save.mkdir(parents=True, exist_ok=True)
        for name in chosen:
            path = save / f"{name}.png"
            sample_image(name).save(path, format="PNG")
            out.print(f"wrote {path}", markup=False, highlight=False)
    except OSError as exc:
        raise Exit(EXIT_WRITE, f"cannot write into {save}: {exc.strerror or exc}") from None


@app.command()
def models(
    profile: ProfileOpt = None, config: ConfigOpt = None, as_json: Annotated[bool, typer.Option("--json")] = False,
    server: Annotated[Optional[str], typer.Option("--server", help="also show the resident models of the visagent server at URL, with their batches")] = None,
) -> None:  # fmt: skip
    """Configured checkpoint per model family, whether it is available, and its batching; with
    ``--server``, the server's resident models and the batches they ran (sizes, histogram)."""
    from visagent.batching import BATCHED_FAMILIES, describe
    from visagent.checkpoints import is_available, weights_bytes

    cfg = _load_config(config, profile)
    rows = []
    for family, mc in cfg.models.items():
        ok, where = is_available(mc.checkpoint, family=family, backend=mc.backend, cache_dir=cfg.cache_path)
        size = weights_bytes(mc.checkpoint, backend=mc.backend, cache_dir=cfg.cache_path) if ok else None
        batching = {"max_batch": mc.max_batch, "batch_wait_ms": mc.batch_wait_ms} if family in BATCHED_FAMILIES else None
        rows.append(
            {"family": family, "checkpoint": mc.checkpoint, "backend": mc.backend, "available": ok, "where": where,
             "resident": False, "weights_bytes": size, "batching": batching}
        )  # fmt: skip
    pool = None
    if server:
        from visagent.client import find_server

        # named for this command: it is asked even where VISAGENT_LOCAL says to run commands here
        remote = find_server(server, environ={k: v for k, v in os.environ.items() if k != "VISAGENT_LOCAL"})
        assert remote is not None  # a named server that cannot be used is a UsageError
        try:
            pool = remote._get("/v1/models").get("pool") or {}
        except (OSError, ValueError) as exc:
            fail_usage(f"cannot read the models of {server}: {exc}")
        resident = {m.get("family") for m in pool.get("models", [])}
        for r in rows:
            r["resident"] = r["family"] in resident
    if as_json:
        sys.stdout.write(json.dumps({"profile": cfg.profile, "models": rows} | ({"pool": pool} if server else {}), indent=2) + "\n")
        return
    from rich.table import Table

    table = Table(
        title=f"models (profile {cfg.profile})",
        caption=None if server else "none resident: a CLI process loads models only while it runs (--server URL shows a server's resident ones)",
    )
    for col in ("family", "backend", "checkpoint", "available", "weights on disk", "batching"):
        table.add_column(col, overflow="fold", no_wrap=col in ("family", "backend"))
    for r in rows:
        size = "" if r["weights_bytes"] is None else f"{r['weights_bytes'] / 1e6:.1f} MB"
        b = r["batching"]
        how = "" if b is None else ("off (max_batch 1)" if b["max_batch"] == 1 else f"max {b['max_batch']}, wait {b['batch_wait_ms']:g} ms")
        table.add_row(r["family"], r["backend"], r["checkpoint"], ("yes: " if r["available"] else "[red]no[/red]: ") + r["where"], size, how)
    out.print(table)
    if pool is not None:
        resident_table = Table(title=f"resident on {server}: {describe(pool.get('batching') or {})}")
        for col in ("model", "size", "uses", "batches"):
            resident_table.add_column(col, overflow="fold")
        for m in pool.get("models", []):
            resident_table.add_row(m["key"], f"{m['bytes'] / 1e6:.1f} MB", str(m["uses"]), describe(m.get("batching") or {}))
        out.print(resident_table)


@app.command()
def doctor(profile: ProfileOpt = None, config: ConfigOpt = None) -> None:
    """Check torch/CUDA, optional backends and checkpoint availability."""
    from importlib.util import find_spec

    cfg = _load_config(config, profile)
    try:
        import torch

        cuda = torch.cuda.is_available()
        out.print(f"torch {torch.__version__}; CUDA: " + (f"yes ({torch.cuda.get_device_name(0)})" if cuda else "no (CPU)"))
    except Exception as exc:  # noqa: BLE001
        out.print(f"[red]torch cannot be imported:[/red] {exc}")
    for mod, extra in (
        ("transformers", "core"), ("segment_anything", "sam"), ("groundingdino", "gdino"), ("av", "video"),
        ("rapidocr_onnxruntime", "ocr"), ("fastapi", "server"), ("langchain", "langchain"), ("supervision", "render"),
        ("gradio", "ui"),
    ):  # fmt: skip
        ok = find_spec(mod) is not None
        out.print(f"  {mod:22s} {'ok' if ok else '[yellow]missing[/yellow] (pip install visagent[' + extra + '])'}")
    out.print(f"cache dir {cfg.cache_path}", highlight=False)
    models(profile=cfg.profile, config=config)
    rows = _doctor_models(cfg)
    for family, checkpoint, ok, advice in rows:
        if not ok:
            out.print(f"[yellow]{family}[/yellow]: {checkpoint} ", end="", highlight=False)
            out.print(advice, markup=False, highlight=False)
    missing = [r for r in rows if not r[2]]
    if missing and cfg.profile != "tiny":
        out.print("  or try the whole pipeline first with --profile tiny (tiny random models, built locally)", highlight=False)
    out.print(_hub_offline_words(cached=not any(_is_hub_id(r[1]) for r in missing)), markup=False, highlight=False)
    usable = len(rows) - len(missing)
    planner_kind = cfg.planner.kind
    needs_planner_model = planner_kind == "llava"
    planner_row = next((r for r in rows if r[0] == "planner"), None)
    planner_ok = not needs_planner_model or (planner_row is not None and planner_row[2])
    summary = f"{usable} of {len(rows)} models usable"
    if not needs_planner_model:
        summary += f"; planner kind {planner_kind!r} needs no local planner model"
    if not planner_ok:
        checkpoint = planner_row[1] if planner_row is not None else "(none configured)"
        why = f"the planner ({checkpoint}) is not usable, so `visagent ask` cannot plan"
        out.print(f"[red]not ready:[/red] {summary}; {why}", highlight=False)
        raise Exit(1)
    if usable == 0:
        out.print(f"[red]not ready:[/red] {summary}: no tool can run", highlight=False)
        raise Exit(1)
    if missing:
        names = ", ".join(r[0] for r in missing)
        why = f"the tools of {names} will fail until their checkpoints are there"
        out.print(f"[yellow]ready, with gaps:[/yellow] {summary}; {why}", highlight=False)
    else:
        out.print(f"[green]ready:[/green] {summary}", highlight=False)


def _is_hub_id(checkpoint: str) -> bool:
    """A Hugging Face Hub id (``org/name``), not ``tiny:``, ``builtin`` or a file path."""
    return (
        checkpoint.count("/") == 1 and ":" not in checkpoint and not checkpoint.startswith(("/", ".", "~"))
        and not Path(os.path.expanduser(checkpoint)).exists()
    )  # fmt: skip


def _doctor_models(cfg: Any) -> list[tuple[str, str, bool, str]]:
    """(family, checkpoint, usable now, what to do where it is not) per configured model family."""
    from visagent.checkpoints import is_available, weights_bytes

    rows = []
    for family, mc in cfg.models.items():
        checkpoint = mc.checkpoint
        ok, _ = is_available(checkpoint, family=family, backend=mc.backend, cache_dir=cfg.cache_path)
        advice = ""
        if checkpoint == "builtin":
            ok = weights_bytes(checkpoint, backend=mc.backend, cache_dir=cfg.cache_path) is not None
            advice = f"ships with the {mc.backend} package, which is missing: pip install 'visagent[{family}]'"
        elif _is_hub_id(checkpoint):
            advice = (
                f"is not in the Hugging Face cache: run `hf download {checkpoint}` where the Hub is reachable "
                "(on another machine: then copy its ~/.cache/huggingface here), "
                f"or set models.{family}.checkpoint in your config to a local folder holding it"
            )
        elif not ok:
            advice = f"is no file or folder here: set models.{family}.checkpoint in your config to an existing checkpoint folder"
        rows.append((family, checkpoint, ok, advice))
    return rows


def _hub_offline_words(cached: bool) -> str:
    """What HF_HUB_OFFLINE is set to, in plain words, with advice; ``cached``: every Hub checkpoint is cached."""
    from visagent.checkpoints import hub_offline

    value = os.environ.get("HF_HUB_OFFLINE")
    if hub_offline():
        return (
            f"HF_HUB_OFFLINE={value}: offline. Only checkpoints already in the Hugging Face cache (or local folders) "
            "are used; nothing is downloaded, and a missing one is an error naming it."
        )
    from visagent.checkpoints import hub_endpoint, hub_reachable

    shown = "is not set" if value is None else f"={value!r} (not 1: online)"
    text = (
        f"HF_HUB_OFFLINE {shown}: the Hugging Face Hub will be contacted when a model loads, and checkpoints "
        "missing from the cache are downloaded; where the Hub cannot be reached (one quick check), a missing one "
        "fails at once with an error naming it."
    )
    if not cached and not hub_reachable():
        text += f"\n  the Hub ({hub_endpoint()}) cannot be reached from here: only cached or local checkpoints will load"
    if cached:
        text += "\n  every Hub checkpoint configured is cached: `export HF_HUB_OFFLINE=1` to load them without contacting the Hub"
    return text


def _register_commands() -> None:
    import visagent.commands as pkg

    for mod in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"visagent.commands.{mod.name}")
        register = getattr(module, "register", None)
        if callable(register):
            register(app)


_register_commands()


def main(argv: list[str] | None = None) -> int:
    """Entry point: runs the app, mapping errors to exit codes and one-line messages."""
    from visagent.errors import UsageError, VisagentError

    # model-loading progress bars and library chatter would bury the answer; VISAGENT_LOG=INFO shows loads
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    logging.basicConfig(level=os.environ.get("VISAGENT_LOG", "WARNING").upper(), format="%(levelname)s %(name)s: %(message)s")
    install_log_filter()
    try:
        app(args=argv, standalone_mode=False)
    except Exit as exc:
        if exc.message:
            err.print(f"error: {exc.message}", markup=False, highlight=False)
        return exc.code
    except UsageError as exc:
        err.print(f"error: {scrub(str(exc))}", markup=False, highlight=False)
        return 2
    except VisagentError as exc:
        err.print(f"error: {scrub(str(exc))}", markup=False, highlight=False)
        return 1
    except KeyboardInterrupt:
        err.print("interrupted (the trace holds every finished step)", markup=False)
        return 130
    except typer.Exit as exc:
        return int(getattr(exc, "exit_code", 0) or 0)
    except typer.Abort:
        return 130
    except Exception as exc:  # noqa: BLE001 - usage errors of the CLI library, and the unexpected
        if hasattr(exc, "format_message") and hasattr(exc, "exit_code"):  # bad flag, missing argument, ...
            message = exc.format_message()
            if not message:  # bare `visagent`: the help was printed, nothing went wrong
                return 0
            err.print(f"error: {message}", markup=False, highlight=False)
            return 2
        logging.getLogger("visagent").debug("unexpected error", exc_info=True)
        err.print(f"error: {type(exc).__name__}: {exc} (set VISAGENT_LOG=DEBUG for details)", markup=False, highlight=False)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
