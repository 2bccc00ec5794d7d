"""Traces as JSON lines, written while the run goes.

File format (version ``RunMeta.format``, 2; files without it are version 1 and still read; a newer
version is a one-line error naming it): first line ``{"type": "meta", ...RunMeta}``, then one line per step (the step's own
JSON, tagged by ``type``), and, when the run ends, ``{"type": "answer", ...}`` with the answer,
evidence and status, and ``meta_end`` (frames added during the run, end time, duration). Inputs
without a file of their own are copied into ``TRACE.media/`` (``MediaInfo.saved_copy``). Each line is flushed when written: a run killed mid-way leaves every finished
step on disk. ``read_trace`` reads a complete or interrupted file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import IO, Any

from pydantic import TypeAdapter, ValidationError

from visagent.errors import UsageError
from visagent.secrets import scrub
from visagent.types import TRACE_FORMAT, Answer, RunMeta, Step, Trace

_step = TypeAdapter(Step)


class TraceWriter:
    """Appends a run's meta, steps and answer to a JSONL file, flushing each line."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        #: why the trace could not be written (the run goes on without it), or None
        self.error: str | None = None
        self._fh: IO[str] | None = None
        try:
            if self.path.parent and not self.path.parent.exists():
                self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115
        except OSError as exc:
            self._failed(exc)

    def _failed(self, exc: OSError) -> None:
        self.error = f"cannot write the trace {self.path}: {exc.strerror or exc}"
        self.close()

    def _write(self, line: str) -> None:
        if self._fh is None:
            return
        try:
            self._fh.write(scrub(line) + "\n")
            self._fh.flush()
        except OSError as exc:  # full disk, read-only folder: the run goes on, the error is reported
            self._failed(exc)

    def meta(self, meta: RunMeta) -> None:
        self._write('{"type":"meta",' + meta.model_dump_json()[1:])

    def step(self, step: Any) -> None:
        self._write(step.model_dump_json())

    def answer(self, answer: Answer) -> None:
        data = answer.model_dump(mode="json", exclude={"trace"})
        data["type"] = "answer"
        if answer.trace is not None:  # what the meta line could not know yet: frames added, timing
            meta = answer.trace.meta
            data["meta_end"] = {"media": [m.model_dump(mode="json") for m in meta.media], "finished": meta.finished, "ms": meta.ms}
        self._write(json.dumps(data))

    def close(self) -> None:
        if self._fh is not None:
            try:
                self._fh.close()
            except OSError as exc:
                self.error = self.error or f"cannot write the trace {self.path}: {exc.strerror or exc}"
            self._fh = None


def read_trace(path: str | os.PathLike[str]) -> tuple[Trace, dict[str, Any] | None]:
    """Read a trace file -> (Trace, the answer record or None for an interrupted run).

    A file may hold several runs (appended); the last run is returned (``read_traces``: all of
    them). A final line cut off by a kill is ignored.
    """
    return read_traces(path)[-1]


def read_traces(path: str | os.PathLike[str]) -> list[tuple[Trace, dict[str, Any] | None]]:
    """Every run of a trace file, in the order they were appended: (Trace, answer record or None)."""
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"trace file not found: {p}")
    runs: list[tuple[Trace, dict[str, Any] | None]] = []
    lines = p.read_text(encoding="utf-8").splitlines()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError:
            if n == len(lines):  # partial last line of a killed run
                break
            raise UsageError(f"{p}:{n}: not a JSON line") from None
        kind = data.get("type")
        try:
            if kind == "meta":
                data.pop("type")
                fmt = data.get("format", 1)
                if not isinstance(fmt, int) or fmt > TRACE_FORMAT:
                    raise UsageError(f"{p}:{n}: trace format {fmt} is newer than this visagent reads ({TRACE_FORMAT}); upgrade visagent")
                runs.append((Trace(meta=RunMeta.model_validate(data)), None))
            elif kind == "answer":
                if not runs:
                    raise UsageError(f"{p}:{n}: answer before the run's meta line")
                trace = runs[-1][0]
                end = data.pop("meta_end", None)
                if end:  # the meta line stays authoritative for the inputs; frames added during the run join them
                    meta = trace.meta.model_dump(mode="json")
                    known = {m["id"] for m in meta["media"]}
                    end["media"] = meta["media"] + [m for m in end.get("media", []) if m.get("id") not in known]
                    trace.meta = RunMeta.model_validate({**meta, **end})
                runs[-1] = (trace, data)
            else:
                if not runs:
                    raise UsageError(f"{p}:{n}: step before the run's meta line")
                runs[-1][0].steps.append(_step.validate_python(data))
        except ValidationError as exc:
            raise UsageError(f"{p}:{n}: invalid trace record: {exc.errors()[0]['msg']}") from None
    if not runs:
        raise UsageError(f"{p}: no run in this trace file")
    return runs
