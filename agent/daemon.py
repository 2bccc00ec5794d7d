"""``visagent serve --detach`` / ``visagent stop``: a server in the background, like ``ollama serve``.

The detached server is ``visagent serve`` with the same options in a new session (it outlives the
terminal); its output goes to ``CACHE_DIR/serve/PORT.log`` and its pid to ``CACHE_DIR/serve/PORT.pid``.
``serve --detach`` returns once ``/healthz`` answers (or says why the server died, with the end of
its log); ``stop`` ends it (SIGTERM, then SIGKILL after ``STOP_WAIT_S``) and removes the pid file.
A token is handed over in the environment, never on the command line (where ``ps`` shows it).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from visagent.errors import UsageError, VisagentError

#: seconds ``serve --detach`` waits for the server to answer (env ``VISAGENT_DETACH_WAIT_S``)
START_WAIT_S = 300.0
STOP_WAIT_S = 10.0


def _folder(cfg: Any) -> Path:
    return Path(cfg.cache_path) / "serve"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process holds the pid now
        return False
    cmdline = Path(f"/proc/{pid}/cmdline")
    if cmdline.exists():  # Linux: make sure the pid is still a visagent server, not a reused pid
        try:
            return b"visagent" in cmdline.read_bytes()
        except OSError:
            return False
    return True


def _tail(path: Path, lines: int = 5) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(line.strip() for line in text[-lines:] if line.strip())


def start_detached(args: list[str], cfg: Any, *, token: str | None, host: str | None, port: int | None) -> None:
    """Start ``visagent serve ARGS`` in the background and wait until it answers."""
    from visagent.cli import err
    from visagent.client import probe
    from visagent.server import load_settings

    settings = load_settings(cfg, host=host, port=port, token=token)
    where = f"http://{settings.host}:{settings.port}"
    folder = _folder(cfg)
    pidfile, logfile = folder / f"{settings.port}.pid", folder / f"{settings.port}.log"
    if pidfile.exists():
        try:
            old = int(pidfile.read_text().strip())
        except ValueError:
            old = 0
        if old and _alive(old):
            raise UsageError(f"a detached visagent server (pid {old}) already serves port {settings.port}; stop it with `visagent stop --port {settings.port}`")
    info, _ = probe(where)
    if info is not None:
        raise UsageError(f"a visagent server already answers at {where}; stop it first, or pass --port")
    folder.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    if token:
        env["VISAGENT_TOKEN"] = token
    with open(logfile, "ab") as log:
        proc = subprocess.Popen(  # noqa: S603 - our own CLI, with the user's own options
            [sys.executable, "-c", "import sys; from visagent.cli import main; sys.exit(main())", "serve", *args],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )  # fmt: skip
    pidfile.write_text(f"{proc.pid}\n")
    wait = float(os.environ.get("VISAGENT_DETACH_WAIT_S") or START_WAIT_S)
    deadline = time.monotonic() + wait
    with err.status(f"starting the visagent server at {where} ...", spinner="dots") if err.is_terminal else nullcontext():
        while True:
            if proc.poll() is not None:
                pidfile.unlink(missing_ok=True)
                raise VisagentError(f"the server exited with code {proc.returncode}: {_tail(logfile) or 'no output'} (log: {logfile})")
            info, _ = probe(where, timeout_s=1.0)
            if info is not None:
                break
            if time.monotonic() > deadline:
                raise VisagentError(f"the server (pid {proc.pid}) did not answer at {where} within {wait:g} s; see {logfile}")
            time.sleep(0.2)
    err.print(f"visagent serving on {where} in the background (pid {proc.pid}, log {logfile}); stop it with `visagent stop --port {settings.port}`", markup=False, highlight=False)


def stop_detached(cfg: Any, port: int | None = None) -> None:
    """Stop the detached server on ``port`` (None: every one this cache folder knows)."""
    from visagent.cli import out

    folder = _folder(cfg)
    pidfiles = [folder / f"{port}.pid"] if port is not None else sorted(folder.glob("*.pid"))
    pidfiles = [p for p in pidfiles if p.exists()]
    if not pidfiles:
        what = f"on port {port}" if port is not None else "at all"
        raise UsageError(f"no detached visagent server {what} (pid files live in {folder})")
    for pidfile in pidfiles:
        try:
            pid = int(pidfile.read_text().strip())
        except ValueError:
            pidfile.unlink(missing_ok=True)
            continue
        if not _alive(pid):
            pidfile.unlink(missing_ok=True)
            out.print(f"port {pidfile.stem}: the server (pid {pid}) had already stopped", markup=False)
            continue
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_WAIT_S
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
        pidfile.unlink(missing_ok=True)
        out.print(f"stopped the visagent server on port {pidfile.stem} (pid {pid})", markup=False)
