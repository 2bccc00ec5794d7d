"""Sessions kept by the HTTP server between requests, so that a follow-up question can cite the
ids of an earlier one (``visagent chat`` against a server, the web page).

A request opens one with ``"session": "new"`` and gets its id back in the answer (``"session"``);
later requests pass that id. A session keeps its media (uploads included: their folder lives as
long as the session), regions, call numbers and history. At most ``server.max_sessions`` are kept;
one unused for ``server.session_ttl_s`` is dropped (and the least recently used one when a new
one would pass the limit). One request at a time per session (409 otherwise).
"""

from __future__ import annotations

import secrets
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: what a request passes as ``session`` to open a new session
NEW = "new"


class SessionProblem(Exception):
    """Why a session cannot be used: ``status`` is the HTTP status (404 unknown, 409 busy)."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


@dataclass
class Kept:
    id: str
    session: Any
    folders: list[Path] = field(default_factory=list)
    used: float = field(default_factory=time.monotonic)
    busy: bool = False

    def discard(self) -> None:
        for folder in self.folders:
            shutil.rmtree(folder, ignore_errors=True)
        self.folders.clear()


class SessionStore:
    """The server's kept sessions (thread-safe; see the module docstring)."""

    def __init__(self, max_sessions: int, ttl_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_sessions = max_sessions
        self.ttl_s = ttl_s
        self.clock = clock
        self._kept: dict[str, Kept] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._kept)

    def acquire(self, session_id: str, make: Callable[[], Any], folder: Path) -> Kept:
        """The session ``session_id`` (``NEW``: a new one made by ``make()``), marked busy until
        ``release``; ``folder`` (the request's uploads) is kept with it."""
        with self._lock:
            self._expire()
            if session_id == NEW:
                if self.max_sessions <= 0:
                    raise SessionProblem(400, "this server keeps no sessions (server.max_sessions is 0)")
                while len(self._kept) >= self.max_sessions:  # the least recently used idle one goes
                    idle = [k for k in self._kept.values() if not k.busy]
                    if not idle:
                        raise SessionProblem(429, f"all {self.max_sessions} sessions are in use (server.max_sessions); retry later")
                    self._drop(min(idle, key=lambda k: k.used).id)
                kept = Kept(id=secrets.token_urlsafe(16), session=make())
                self._kept[kept.id] = kept
            else:
                found = self._kept.get(session_id)
                if found is None:
                    raise SessionProblem(404, "unknown or expired session (open one with \"session\": \"new\")")
                if found.busy:
                    raise SessionProblem(409, "this session is answering another question; wait for it to finish")
                kept = found
            kept.busy = True
            kept.used = self.clock()
            kept.folders.append(folder)
            roots = kept.session.roots
            if roots is not None:  # the request's uploads may enter this session
                roots.append(folder.resolve())
            return kept

    def release(self, kept: Kept) -> None:
        with self._lock:
            kept.busy = False
            kept.used = self.clock()
            if kept.id not in self._kept:  # dropped meanwhile (close): its folders go now
                kept.discard()

    def holds(self, folder: Path) -> bool:
        """Whether a kept session owns ``folder`` (it is removed with the session)."""
        with self._lock:
            return any(folder in kept.folders for kept in self._kept.values())

    def close(self, session_id: str) -> bool:
        with self._lock:
            return self._drop(session_id)

    def clear(self) -> None:
        with self._lock:
            for sid in list(self._kept):
                self._drop(sid)

    def _drop(self, session_id: str) -> bool:
        kept = self._kept.pop(session_id, None)
        if kept is None:
            return False
        if not kept.busy:
            kept.discard()
        return True

    def _expire(self) -> None:
        now = self.clock()
        for kept in list(self._kept.values()):
            if not kept.busy and now - kept.used > self.ttl_s:
                self._drop(kept.id)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {"sessions": len(self._kept), "max_sessions": self.max_sessions, "session_ttl_s": self.ttl_s}
