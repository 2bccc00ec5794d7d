"""Client mode: ``visagent ask`` / ``chat`` / ``run`` answered by a running ``visagent serve``.

A server keeps its models loaded, so a repeat question costs the run, not the start-up (importing
torch, loading checkpoints). The CLI uses one when

- ``--server URL`` or ``VISAGENT_SERVER`` names it (unreachable, or not a visagent server: an error
  that says so), or one answers on the default local address ``http://127.0.0.1:8000``
  (``/healthz`` says ``"service": "visagent"``),
- and it runs what was asked for: the same profile when ``--profile`` / ``--config`` /
  ``VISAGENT_PROFILE`` name one, the same planner kind when ``--planner`` names one (a
  ``script:PLAN.yaml`` plan is sent with the request, so any server runs it, unless one of its
  calls names a path of this machine, e.g. ``search``'s ``gallery``: the server reads no client
  files). Otherwise the command runs in-process, except with ``--server``, where it is an error
  that says why.

``--local`` (or ``VISAGENT_LOCAL=1``) always runs in-process. ``VISAGENT_TOKEN`` is sent as the
bearer token.

What the user sees is the same either way: media are checked here first (the same one-line
errors), the steps stream in as they happen (``-v``), the trace file is written line by line with
the media named as the user named them (so ``visagent replay`` works on it), ``--show`` /
``--report`` draw on the local media (frames a tool took from a video are decoded here at the
recorded times), and the exit codes are the same (a 4xx from the server is bad input: exit 2).
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from visagent.errors import UsageError, VisagentError
from visagent.media import MediaStore
from visagent.secrets import scrub
from visagent.streams import StepStream
from visagent.types import Answer, MediaInfo, RunMeta, Step

#: where ``visagent serve`` listens by default, and where ``visagent ask`` looks for one
DEFAULT_URL = "http://127.0.0.1:8000"
#: seconds to wait for the default address to answer (nothing listening: refused at once)
PROBE_TIMEOUT_S = 0.5


class ServerError(VisagentError):
    """The server could not answer (unreachable, 429 / 5xx, a broken stream): exit 1."""


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


@dataclass
class RemoteServer:
    """A running visagent server: its URL, the token to send and what ``/healthz`` said."""

    url: str
    token: str | None = field(default=None, repr=False)  # never shown
    info: dict[str, Any] = field(default_factory=dict)
    timeout_s: float = 600.0
    _path_fields: dict[str, set[str]] | None = field(default=None, repr=False)

    @property
    def profile(self) -> str | None:
        return self.info.get("profile")

    @property
    def planner(self) -> str | None:
        return self.info.get("planner")

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def mismatch(self, profile: str | None = None, planner: str | None = None, plans: Sequence[Sequence[dict[str, Any]]] = ()) -> str | None:
        """Why this server cannot run what was asked (another profile or planner kind, or plans
        naming files of this machine), or None."""
        if profile is not None and self.profile is not None and profile != self.profile:
            return f"the server at {self.url} runs profile '{self.profile}', not '{profile}'"
        kind = (planner or "").split(":", 1)[0]
        if kind and kind != "script" and self.planner is not None and kind != self.planner:
            return f"the server at {self.url} runs the '{self.planner}' planner, not '{kind}'"
        paths = self.path_args(plans)
        if paths:
            return f"the plan names a path of this machine ({paths[0]}), which the server at {self.url} does not read"
        return None

    def path_args(self, plans: Sequence[Sequence[dict[str, Any]]]) -> list[str]:
        """``tool.arg=value`` for each plan step argument that names a file or folder (a tool's
        ``path_field``, e.g. ``search``'s ``gallery``)."""
        steps = [step for plan in plans for step in plan if step.get("tool") and step.get("args")]
        if not steps:
            return []
        if self._path_fields is None:
            self._path_fields = {}
            try:
                specs = self._get("/v1/tools")
            except (OSError, ValueError):
                specs = []
            for spec in specs if isinstance(specs, list) else []:
                props = (spec.get("input_schema") or {}).get("properties") or {}
                self._path_fields[spec.get("name")] = {k for k, v in props.items() if isinstance(v, dict) and v.get("x-visagent-path")}
        return [
            f"{step['tool']}.{arg}={step['args'][arg]}"
            for step in steps
            for arg in sorted(self._path_fields.get(step["tool"], ()))
            if step["args"].get(arg) is not None
        ]

    def _get(self, path: str) -> Any:
        conn, prefix = _connect(self.url, 30.0)
        try:
            conn.request("GET", prefix + path, headers=self._headers())
            response = conn.getresponse()
            body = response.read(1 << 24)
        finally:
            conn.close()
        if response.status != 200:
            raise ValueError(_detail(response.status, body))
        return json.loads(body)

    def stream(
        self,
        question: str,
        sources: Sequence[str],
        *,
        max_steps: int | None = None,
        plan: list[dict[str, Any]] | None = None,
        trace_path: str | Path | None = None,
        limits: Any = None,
        progress: Any = None,
    ) -> "RemoteRun":
        """One run on the server; iterate the returned ``RemoteRun`` for its steps (``progress``:
        accepted for ``Agent.stream``'s sake; a server does not report a tool's progress). Bad
        media fail here, with the local one-line errors."""
        local = _Mirror(limits)
        return RemoteRun(self, question, local, local.add(sources), max_steps=max_steps, plan=plan, trace_path=trace_path)

    def ask(self, question: str, sources: Sequence[str], **kwargs: Any) -> Answer:
        return self.stream(question, sources, **kwargs).result()

    def chat(self, sources: Sequence[str] = (), *, max_steps: int | None = None, limits: Any = None) -> "RemoteConversation":
        """A multi-turn conversation kept by the server (its ``session``)."""
        return RemoteConversation(self, list(sources), max_steps=max_steps, limits=limits)


def _connect(url: str, timeout_s: float) -> tuple[Any, str]:
    """An HTTP(S) connection to ``url``'s host and the URL's path prefix (the standard library's
    client: a probe costs a millisecond, not an SSL context and a client pool)."""
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    return cls(parts.hostname or "127.0.0.1", parts.port, timeout=timeout_s), parts.path.rstrip("/")


def probe(url: str, token: str | None = None, timeout_s: float = PROBE_TIMEOUT_S) -> tuple[dict[str, Any] | None, str]:
    """``(healthz JSON, "")`` when a visagent server answers at ``url``, else ``(None, why not)``."""
    try:
        conn, prefix = _connect(url, timeout_s)
    except ValueError as exc:  # a bad port
        return None, f"bad URL ({exc})"
    try:
        conn.request("GET", prefix + "/healthz")
        response = conn.getresponse()
        body = response.read(65536)
    except (OSError, ValueError) as exc:
        return None, f"cannot reach it ({type(exc).__name__}: {exc or 'no answer'})"
    finally:
        conn.close()
    try:
        info = json.loads(body)
    except ValueError:
        info = None
    if response.status != 200 or not isinstance(info, dict) or info.get("service") != "visagent":
        return None, f"it is not a visagent server (GET /healthz: HTTP {response.status})"
    return info, ""


def find_server(
    server: str | None = None, *, local: bool = False, profile: str | None = None, planner: str | None = None,
    environ: Any = None, plans: Any = (),
) -> RemoteServer | None:  # fmt: skip
    """The server to use for this command, or None to run in-process (see the module docstring).

    ``profile`` / ``planner``: what the user asked for explicitly (None: whatever the server runs);
    ``plans``: the scripted plans to send, or a function returning them, called only once a server
    is found (a plan naming a local path runs here). A server named with ``server`` that cannot be
    used is a ``UsageError`` naming why.
    """
    env = os.environ if environ is None else environ
    if local or _truthy(env.get("VISAGENT_LOCAL")):
        return None
    token = env.get("VISAGENT_TOKEN") or None
    named = server or env.get("VISAGENT_SERVER") or None
    url = (named or DEFAULT_URL).rstrip("/")
    if named and not url.startswith(("http://", "https://")):
        raise UsageError(f"--server needs an http(s) URL, got {named!r} (e.g. {DEFAULT_URL})")
    info, why = probe(url, token, timeout_s=10.0 if named else PROBE_TIMEOUT_S)
    if info is None:
        if named:
            where = "--server" if server else "VISAGENT_SERVER"
            raise UsageError(f"no visagent server at {url} ({where}): {why} (start one with `visagent serve`, or pass --local)")
        return None
    remote = RemoteServer(url, token, info)
    reason = remote.mismatch(profile, planner, plans() if callable(plans) else plans)
    if reason:
        if server:  # named for this command: say why it cannot be used
            raise UsageError(f"{reason}; pass --local to run in-process")
        return None  # VISAGENT_SERVER or the default address: what it cannot run runs here
    return remote


# -- one run --------------------------------------------------------------------------------
def _media_item(source: str) -> dict[str, Any]:
    if source.startswith("sample:"):
        return {"sample": source[len("sample:") :]}
    if source.startswith(("http://", "https://")):
        raise UsageError(f"{source}: URLs are not sent to a server; download the file first, or pass --local")
    path = Path(os.path.expanduser(source))
    return {"data": base64.b64encode(path.read_bytes()).decode("ascii"), "filename": path.name}


def _detail(status: int, body: bytes) -> str:
    try:
        data = json.loads(body)
        detail = data.get("detail") if isinstance(data, dict) else None
    except ValueError:
        detail = None
    text = body[:200].decode("utf-8", "replace").strip()
    return (str(detail or text or f"HTTP {status}").splitlines() or [f"HTTP {status}"])[0]


def _lines(response: Any) -> Iterator[str]:
    while True:
        raw = response.readline(1 << 24)
        if not raw:
            return
        yield raw.decode("utf-8").rstrip("\r\n")


def _sse(lines: Iterator[str]) -> Iterator[tuple[str, str]]:
    """``(event, data)`` pairs of a server-sent event stream."""
    event, data = "message", []
    for line in lines:
        if not line:
            if data:
                yield event, "\n".join(data)
            event, data = "message", []
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].lstrip(" "))
    if data:
        yield event, "\n".join(data)


class RemoteRun(StepStream):
    """One run answered by a server; behaves like ``RunStream`` for the CLI: iterate for the
    steps, then ``answer``, ``media`` (the local media, with the frames tools added) and
    ``writer`` (the trace file, or None)."""

    def __init__(
        self,
        server: RemoteServer,
        question: str,
        local: "_Mirror",
        sources: list[str],
        *,
        max_steps: int | None = None,
        plan: list[dict[str, Any]] | None = None,
        trace_path: str | Path | None = None,
        conversation: "RemoteConversation | None" = None,
    ) -> None:
        """``local``: the media as the server will have them; ``sources``: those to send (checked
        and registered in ``local`` already)."""
        from visagent.trace import TraceWriter

        self.server = server
        self.question = question
        self.conversation = conversation
        self.local = local
        self.sources = sources
        self.max_steps = max_steps
        self.plan = plan
        self.answer: Answer | None = None
        self.writer = TraceWriter(trace_path) if trace_path else None
        self._meta: RunMeta | None = None
        self._steps: list[Step] = []
        self._iter: Iterator[Step] | None = None

    @property
    def media(self) -> MediaStore:
        return self.local.store


    def _body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"question": self.question, "media": [_media_item(s) for s in self.sources], "include_trace": True}
        if self.max_steps is not None:
            body["max_steps"] = self.max_steps
        if self.plan is not None:
            body["plan"] = self.plan
        if self.conversation is not None:
            body["session"] = self.conversation.session or "new"
        return body

    def _run(self) -> Iterator[Step]:
        from pydantic import TypeAdapter

        step_type: TypeAdapter[Step] = TypeAdapter(Step)
        body = json.dumps(self._body()).encode()
        headers = {"Content-Type": "application/json", "Accept": "text/event-stream", **self.server._headers()}
        conn, prefix = _connect(self.server.url, self.server.timeout_s)
        try:
            conn.request("POST", prefix + "/v1/ask/stream", body=body, headers=headers)
            response = conn.getresponse()
            if response.status != 200:
                self._refused(response.status, _detail(response.status, response.read(65536)))
            for event, data in _sse(_lines(response)):
                if event == "meta":
                    self._meta = self.local.rewrite(RunMeta.model_validate_json(data))
                    if self.writer is not None:
                        self.writer.meta(self._meta)
                elif event == "step":
                    step = step_type.validate_json(data)
                    self._steps.append(step)
                    if self.writer is not None:
                        self.writer.step(step)
                    yield step
                elif event == "answer":
                    self._finish(json.loads(data))
                elif event == "error":
                    self._fail(json.loads(data).get("detail") or "the server ended the run")
        except OSError as exc:  # refused, reset, timed out
            if self.answer is None:
                self._fail(f"the server at {self.server.url} stopped answering ({type(exc).__name__}: {exc or 'no answer'})")
        finally:
            conn.close()
        if self.answer is None:
            self._fail(f"the server at {self.server.url} ended the stream without an answer")

    def _refused(self, status: int, detail: str) -> None:
        if status == 401:
            raise UsageError(f"the server at {self.server.url} wants a token: {detail} (set VISAGENT_TOKEN)")
        if 400 <= status < 500 and status not in (408, 429):
            raise UsageError(detail)
        raise ServerError(f"the server at {self.server.url} could not answer: HTTP {status}: {detail}")

    def _finish(self, data: dict[str, Any]) -> None:
        session = data.pop("session", None)
        answer = Answer.model_validate(data)
        answer.trace.meta = self.local.rewrite(answer.trace.meta)
        if not answer.trace.steps:
            answer.trace.steps = list(self._steps)
        self.local.sync(answer.trace.meta.media)
        if self.conversation is not None:
            self.conversation.end_turn(session, answer)
        self.answer = answer
        if self.writer is not None:
            self.writer.answer(answer)
            self.writer.close()

    def _fail(self, error: str) -> None:
        from visagent.types import Trace

        meta = self._meta or RunMeta(question=self.question)
        self._finish(
            Answer(answer="", status="failed", error=scrub(error), trace=Trace(meta=meta, steps=list(self._steps))).model_dump(mode="json")
        )


class _Mirror:
    """The local copy of a server session's media: the same ids, checked with the same errors,
    the frames tools added re-decoded here (for ``--show`` / ``--report``); it also maps the
    server's names for uploads back to the user's own (for the trace)."""

    def __init__(self, limits: Any = None) -> None:
        if limits is None:
            self.store = MediaStore()
        else:
            self.store = MediaStore(limits.max_pixels, limits.allow_urls, limits.max_video_pixels)
        self.inputs: list[str] = []  # the user's sources of the session's inputs, in id order
        self._ids: dict[str, str] = {}

    def add(self, sources: Sequence[str]) -> list[str]:
        """Check and register ``sources``; returns those the server has not seen yet (a sample
        or path given again keeps its id, as in a local session)."""
        new = []
        for source in sources:
            if source in self._ids:
                continue
            self._ids[source] = self.store.add(source)
            self.inputs.append(source)
            new.append(source)
        return new

    def rewrite(self, meta: RunMeta) -> RunMeta:
        """``meta`` with the inputs named as the user named them (the server saw temporary copies)."""
        inputs = iter(self.inputs)
        media = []
        for info in meta.media:
            if info.parent is None:
                source = next(inputs, info.source)
                local = self.store.info(self._ids[source]) if source in self._ids else None
                info = info.model_copy(update={"source": local.source if local else source, "saved_copy": None})
            media.append(info)
        return meta.model_copy(update={"media": media})

    def sync(self, infos: Sequence[MediaInfo]) -> None:
        """Register the frames a tool added on the server (decoded from the local video)."""
        have = set(self.store.ids())
        for info in infos:
            if info.id in have or info.parent is None or info.kind != "image":
                continue
            if info.parent not in have or info.timestamp is None:
                break  # cannot be re-created here: later ids would not match, so stop
            from visagent.tools.video import probe as probe_video
            from visagent.tools.video import read_frames_at

            path = str(self.store.video_path(info.parent))
            start = probe_video(path).start
            frame = read_frames_at(path, [start + info.timestamp])[0]
            got = self.store.add_image(frame.image, info.source, timestamp=info.timestamp, parent=info.parent)
            if got != info.id:
                break
            have.add(got)


class RemoteConversation:
    """``Conversation`` against a server: turns share the server's session (its ids stay citable)."""

    def __init__(self, server: RemoteServer, sources: list[str], *, max_steps: int | None = None, limits: Any = None) -> None:
        self.server = server
        self.max_steps = max_steps
        self.local = _Mirror(limits)
        self.pending = self.local.add(sources)  # checked now, sent with the first question
        self.session: str | None = None
        self.turns: list[Answer] = []
        self.regions: dict[str, str] = {}

    @property
    def media(self) -> MediaStore:
        return self.local.store

    def add_media(self, source: str) -> str:
        """Check ``source`` and send it with the next question; returns its id."""
        self.pending += self.local.add([source])
        return self.local._ids[source]

    def stream(
        self, question: str, *, trace_path: str | Path | None = None, planner: Any = None, plan: list[dict[str, Any]] | None = None, **_: Any
    ) -> RemoteRun:
        """The next turn. ``planner``: a ``ScriptedPlanner`` whose plan is sent (as ``plan``, already
        as dicts); any other planner is the server's."""
        if planner is not None:
            plan = plan_dicts(planner.plan)
        pending, self.pending = self.pending, []  # checked and registered when they were given
        return RemoteRun(self.server, question, self.local, pending, max_steps=self.max_steps, plan=plan, trace_path=trace_path,
                         conversation=self)  # fmt: skip

    def ask(self, question: str, **kwargs: Any) -> Answer:
        return self.stream(question, **kwargs).result()

    def end_turn(self, session: str | None, answer: Answer) -> None:
        if session:
            self.session = session
        self.turns.append(answer)
        from visagent.render import iter_regions

        for step in answer.trace.tool_steps():
            for region in iter_regions(step.output):
                self.regions.setdefault(region["id"], step.tool)


def plans_of(planner: str | None) -> list[list[dict[str, Any]]] | None:
    """The plans of a ``script:PLAN.yaml`` planner (one, or one per turn), to send with the
    requests (None for another planner)."""
    if not planner or not planner.startswith("script:"):
        return None
    from visagent.planners.scripted import load_plans

    return [plan_dicts(plan) for plan in load_plans(planner[len("script:") :])]


def plan_of(planner: str | None) -> list[dict[str, Any]] | None:
    """The plan a single run of a ``script:PLAN.yaml`` planner follows (its first turn's)."""
    plans = plans_of(planner)
    return plans[0] if plans else None


def plan_dicts(steps: Sequence[Any]) -> list[dict[str, Any]]:
    """Plan steps (Actions / Finals) as a plan file writes them: ``{tool, args}`` / ``{final, evidence}``."""
    out: list[dict[str, Any]] = []
    for step in steps:
        if isinstance(step, dict):  # already written as a plan file writes it
            out.append(dict(step))
            continue
        if step.kind == "action":
            item: dict[str, Any] = {"tool": step.tool, "args": step.args}
        else:
            item = {"final": step.answer, "evidence": list(step.evidence)}
        if step.thought:
            item["thought"] = step.thought
        out.append(item)
    return out
