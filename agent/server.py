"""The HTTP server: ``create_app(agent, settings)`` -> a FastAPI app serving one ``Agent``.

Endpoints (JSON unless said otherwise; errors are ``{"detail": "<one line>"}``):

- ``POST /v1/ask``: multipart form (``files``: one or more image/video files, ``question``,
  optional ``max_steps``) or JSON ``{"question", "media": [{"data": BASE64, "filename"?} |
  {"path": SERVER_PATH} | {"sample": NAME}], "max_steps"?, "include_trace"?, "session"?, "plan"?}``
  -> the ``Answer`` (``status`` says answered / max_steps / failed). ``"session": "new"`` keeps the
  session for follow-ups (the answer's ``session`` is its id; ``visagent.http_sessions``);
  ``plan`` is a scripted plan for this request.
- ``POST /v1/ask/stream``: same body -> ``text/event-stream``: ``event: meta`` (the run's
  metadata, as a trace file's first line), one ``event: step`` per step (data: the step JSON),
  then ``event: answer`` (data: the Answer JSON), or ``event: error``.
- ``DELETE /v1/sessions/{id}``: close a kept session.
- ``GET /v1/tools``: the tool specs; ``GET /v1/models``: configured checkpoints and the pool's
  resident models; ``GET /healthz`` (no auth): liveness and load; ``GET /openapi.json``.

Security and limits (``ServerSettings``; config section ``server:`` plus ``visagent serve`` flags):
bearer token on every ``/v1`` route (401 without), request body size (413), pixels per image
(413), ``max_steps`` cap (400), per-request timeout (504), at most ``max_concurrency`` runs at once
with ``max_queue`` more waiting (429 beyond), server-side paths only inside ``allowed_roots``
(403), bad media 400 with the one-line reason. Responses never carry stack traces.

All requests share the agent's ModelPool: one copy of each model, one call at a time per model.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import concurrent.futures as futures
import hmac
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

from visagent.config import ServerSettings
from visagent.errors import ForbiddenPathError, MediaError, UsageError
from visagent.http_sessions import NEW, SessionProblem, SessionStore
from visagent.netlimits import PerClientLimit
from visagent.secrets import register, scrub
from visagent.session import inside_roots, resolve_roots

__all__ = ["ServerSettings", "create_app", "is_loopback", "load_settings", "serve"]

if TYPE_CHECKING:  # pragma: no cover
    from visagent.agent import Agent
    from visagent.aio import AsyncRunStream
    from visagent.types import Answer

log = logging.getLogger(__name__)

LOOPBACK = ("127.0.0.1", "::1", "localhost")


def load_settings(config: Any = None, environ: dict[str, str] | None = None, **flags: Any) -> ServerSettings:
    """Settings from ``config.server`` (a dict), then env ``VISAGENT_TOKEN``, then non-None ``flags``."""
    env = os.environ if environ is None else environ
    server = getattr(config, "server", None)
    data: dict[str, Any] = server.model_dump(exclude_unset=True) if isinstance(server, ServerSettings) else dict(server or {})
    if env.get("VISAGENT_TOKEN"):
        data["token"] = env["VISAGENT_TOKEN"]
    data.update({k: v for k, v in flags.items() if v is not None})
    if isinstance(data.get("token"), str):
        if not data["token"].strip():
            raise UsageError("the server token is empty or only white space: give a real token, or none")
        register(data["token"])
    try:
        return ServerSettings.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        raise UsageError(f"invalid server setting server.{loc}: {err['msg']}") from None


def is_loopback(host: str) -> bool:
    if host in LOOPBACK:
        return True
    import ipaddress

    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# -- request bodies -------------------------------------------------------------------------
class MediaItem(BaseModel):
    """One media input: exactly one of ``data`` (base64 bytes of an image or video file, a
    ``data:...;base64,`` prefix allowed), ``path`` (a file on the server, inside the allowed
    roots) or ``sample`` (a bundled sample image name, e.g. ``coffee``)."""

    model_config = ConfigDict(extra="forbid")
    data: str | None = None
    filename: str | None = Field(None, max_length=255)
    path: str | None = None
    sample: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> "MediaItem":
        given = [k for k in ("data", "path", "sample") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of data, path or sample")
        return self


class AskRequest(BaseModel):
    """JSON body of ``/v1/ask`` and ``/v1/ask/stream``. Media become img_0.. / vid_0.. in order."""

    model_config = ConfigDict(extra="forbid")
    question: str = Field(min_length=1, max_length=100_000)
    #: at least one, unless the request continues a ``session`` that has media
    media: list[MediaItem] = Field(default_factory=list)
    max_steps: int | None = Field(None, ge=1)
    include_trace: bool | None = None
    #: ``"new"`` opens a session kept between requests; its id (the answer's ``session``) continues it
    session: str | None = Field(None, min_length=1, max_length=64)
    #: a scripted plan for this request: ``[{"tool", "args"} | {"final", "evidence"}]`` (``server.allow_plans``)
    plan: list[dict[str, Any]] | None = Field(None, min_length=1, max_length=256)


@dataclass
class Parsed:
    """What a request asks for, its media accepted (uploads written to the request's folder)."""

    question: str
    sources: list[str]
    max_steps: int | None
    include_trace: bool
    session: str | None = None
    plan: list[dict[str, Any]] | None = None


class ErrorBody(BaseModel):
    detail: str


class Problem(Exception):
    """An HTTP error with a one-line reason."""

    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail.splitlines()[0] if detail else "error"
        self.headers = headers


def _one_line_validation(exc: ValidationError | Any) -> str:
    errors = exc.errors() if hasattr(exc, "errors") else []
    parts = []
    for err in list(errors)[:3]:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
        parts.append(f"{loc}: {err.get('msg', 'invalid')}")
    return "invalid request: " + ("; ".join(parts) or str(exc).splitlines()[0])


_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


def _safe_name(name: str | None, index: int) -> str:
    base = _SAFE_NAME.sub("_", Path(name or "").name)[:80].strip("._") or "upload"
    return f"{index}_{base}"


# -- concurrency ------------------------------------------------------------------------------
class Gate:
    """At most ``limit`` holders; at most ``queue`` waiting; anyone beyond is refused (429)."""

    def __init__(self, limit: int, queue: int) -> None:
        self.limit = limit
        self.queue = queue
        self.active = 0
        self.waiting = 0
        self._sem = asyncio.Semaphore(limit)
        self.served = 0
        self.refused = 0

    async def enter(self) -> None:
        if self.active + self.waiting >= self.limit + self.queue:
            self.refused += 1
            raise Problem(
                429,
                f"server busy: {self.active} runs in progress and {self.waiting} waiting (limit {self.limit} + queue {self.queue}); retry later",
                {"Retry-After": "1"},
            )
        self.waiting += 1
        try:
            await self._sem.acquire()
        finally:
            self.waiting -= 1
        self.active += 1

    def leave(self) -> None:
        self.active -= 1
        self.served += 1
        self._sem.release()


# -- body size --------------------------------------------------------------------------------
class BodyLimit:
    """ASGI middleware: 413 for a request body over ``limit`` bytes (declared or streamed)."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = None
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = None
        if declared is not None and declared > self.limit:
            await self._refuse(send)
            return
        if declared is not None:
            await self.app(scope, receive, send)
            return
        # no declared length (chunked): read it here, up to the limit
        chunks: list[bytes] = []
        total = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            body = message.get("body", b"")
            total += len(body)
            if total > self.limit:
                await self._refuse(send)
                return
            chunks.append(body)
            if not message.get("more_body", False):
                break
        replay = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]

        async def replay_receive() -> dict[str, Any]:
            if replay:
                return replay.pop()
            return await receive()

        await self.app(scope, replay_receive, send)

    async def _refuse(self, send: Callable[..., Any]) -> None:
        body = json.dumps({"detail": f"request body is over the limit of {self.limit} bytes"}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), (b"connection", b"close")],
            }
        )
        await send({"type": "http.response.body", "body": body})


# -- the app ----------------------------------------------------------------------------------
class _Server:
    """What the routes share: the agent, settings, gate and worker threads."""

    def __init__(self, agent: "Agent", settings: ServerSettings) -> None:
        self.agent = agent
        self.settings = settings
        self.roots = resolve_roots(settings.allowed_roots) or []
        self.max_pixels = settings.max_pixels or agent.config.limits.max_pixels
        self.max_steps = settings.max_steps or agent.config.limits.max_steps
        self.executor = futures.ThreadPoolExecutor(max_workers=settings.max_concurrency, thread_name_prefix="visagent-http")
        self.gate: Gate | None = None
        self.started = time.time()
        self.sessions = SessionStore(settings.max_sessions, settings.session_ttl_s)

    def get_gate(self) -> Gate:
        if self.gate is None:  # created on the server's event loop
            self.gate = Gate(self.settings.max_concurrency, self.settings.max_queue)
        return self.gate

    # -- auth ---------------------------------------------------------------------------------
    def check_token(self, authorization: str | None) -> None:
        token = self.settings.token
        if not token:
            return
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
            raise Problem(401, "missing or wrong bearer token (send 'Authorization: Bearer TOKEN')", {"WWW-Authenticate": "Bearer"})

    # -- inputs -------------------------------------------------------------------------------
    def check_path(self, raw: str) -> str:
        if not self.roots:
            raise Problem(403, "server-side paths are off (no server.allowed_roots configured)")
        try:
            return str(inside_roots(raw, self.roots))
        except ForbiddenPathError as exc:
            raise Problem(403, str(exc)) from None
        except MediaError as exc:
            raise Problem(400, str(exc)) from None

    def check_pixels(self, path: Path, label: str, budget: list[int]) -> None:
        """413 for an image over ``max_pixels``, or once the request's images together pass
        ``max_total_pixels`` (``budget``: the pixels left, updated)."""
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as img:
                w, h = img.size
        except Image.DecompressionBombError:
            raise Problem(413, f"{label}: image is over the server limit of {self.max_pixels / 1e6:.1f} MP") from None
        except (UnidentifiedImageError, OSError, ValueError):
            return  # a video, or not an image: the media store gives the precise reason
        if w * h > self.max_pixels:
            raise Problem(413, f"{label}: image has {w}x{h} = {w * h / 1e6:.1f} MP, over the server limit of {self.max_pixels / 1e6:.1f} MP")
        budget[0] -= w * h
        if budget[0] < 0:
            limit = self.settings.max_total_pixels
            raise Problem(413, f"{label}: the request's images add up to over {limit / 1e6:.0f} MP (server.max_total_pixels)")

    def check_question(self, question: str) -> str:
        limit = self.settings.max_question_chars
        if len(question) > limit:
            raise Problem(400, f"the question is {len(question)} characters long, over the limit of {limit} (server.max_question_chars)")
        return question

    def check_count(self, n: int) -> None:
        if n > self.settings.max_files:
            raise Problem(413, f"too many media: {n} (server.max_files is {self.settings.max_files})")

    def check_steps(self, max_steps: int | None) -> int | None:
        if max_steps is not None and not 1 <= max_steps <= self.max_steps:
            raise Problem(400, f"max_steps must be between 1 and {self.max_steps}, got {max_steps}")
        return max_steps

    async def parse(self, request: Any, tmp: Path) -> Parsed:
        """What a multipart or JSON body asks for."""
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        include_trace = self.settings.include_trace
        if ctype == "multipart/form-data":
            form = await request.form(max_files=self.settings.max_files, max_fields=16, max_part_size=self.settings.max_request_bytes)
            try:
                return await self._parse_form(form, tmp, include_trace)
            finally:
                await form.close()
        if ctype == "application/json":
            try:
                body = AskRequest.model_validate_json(await request.body())
            except ValidationError as exc:
                raise Problem(422, _one_line_validation(exc)) from None
            if body.include_trace is not None:
                include_trace = body.include_trace
            self.check_question(body.question)
            self.check_count(len(body.media))
            sources, budget = [], [self.settings.max_total_pixels]
            for i, item in enumerate(body.media):
                if item.sample is not None:
                    sources.append(f"sample:{item.sample}")
                elif item.path is not None:
                    path = self.check_path(item.path)
                    if _is_file(path):
                        self.check_pixels(Path(path), f"media[{i}]", budget)
                    sources.append(path)
                else:
                    data = item.data or ""
                    if data.startswith("data:") and "," in data:
                        data = data.split(",", 1)[1]
                    try:
                        raw = base64.b64decode(data, validate=True)
                    except (binascii.Error, ValueError):
                        raise Problem(400, f"media[{i}].data is not valid base64") from None
                    if not raw:
                        raise Problem(400, f"media[{i}].data is empty")
                    path = tmp / _safe_name(item.filename, i)
                    path.write_bytes(raw)
                    self.check_pixels(path, item.filename or f"media[{i}]", budget)
                    sources.append(str(path))
            if body.plan is not None and not self.settings.allow_plans:
                raise Problem(403, "this server takes no scripted plans (server.allow_plans is false)")
            return self.check_media(
                Parsed(body.question, sources, self.check_steps(body.max_steps), include_trace, body.session, body.plan)
            )
        raise Problem(415, f"unsupported content type {ctype or 'none'!r}: send multipart/form-data or application/json")

    def check_media(self, parsed: Parsed) -> Parsed:
        if not parsed.sources and (parsed.session is None or parsed.session == NEW):
            raise Problem(400, "the request needs at least one media input (or a session that has media)")
        return parsed

    async def _parse_form(self, form: Any, tmp: Path, include_trace: bool) -> Parsed:
        question = form.get("question")
        if not isinstance(question, str) or not question.strip():
            raise Problem(400, "the form needs a non-empty 'question' field")
        self.check_question(question)
        raw_steps = form.get("max_steps")
        max_steps = None
        if raw_steps not in (None, ""):
            try:
                max_steps = int(str(raw_steps))
            except ValueError:
                raise Problem(400, f"max_steps must be an integer, got {str(raw_steps)[:40]!r}") from None
        raw_trace = form.get("include_trace")
        if isinstance(raw_trace, str) and raw_trace:
            include_trace = raw_trace.lower() in ("1", "true", "yes", "on")
        files = [f for f in form.getlist("files") if not isinstance(f, str)]
        raw_session = form.get("session")
        session = raw_session[:64] if isinstance(raw_session, str) and raw_session else None
        if not files and session in (None, NEW):
            raise Problem(400, "the form needs at least one file in 'files'")
        self.check_count(len(files))
        sources, budget = [], [self.settings.max_total_pixels]
        for i, upload in enumerate(files):
            path = tmp / _safe_name(upload.filename, i)
            with open(path, "wb") as fh:
                await asyncio.to_thread(shutil.copyfileobj, upload.file, fh)
            self.check_pixels(path, upload.filename or f"files[{i}]", budget)
            sources.append(str(path))
        return Parsed(question, sources, self.check_steps(max_steps), include_trace, session)

    # -- running ------------------------------------------------------------------------------
    async def start(
        self,
        question: str,
        sources: list[str],
        max_steps: int | None,
        tmp: Path,
        history: list[dict[str, Any]] | None = None,
        *,
        session_id: str | None = None,
        plan: list[dict[str, Any]] | None = None,
    ) -> "AsyncRunStream":
        """Wait for a slot (429 if the queue is full), validate the media and start the run on the
        server's worker threads, through the same bridge as ``Agent.astream``.

        ``session_id``: a kept session to continue (``"new"``: open one; the run's ``kept`` says
        which); ``plan``: a scripted plan for this run. The slot and the request's temporary
        folder are released when the run's worker ends, even if the client has gone or the
        request timed out (a kept session keeps the folder: its media live in it).
        """
        from visagent.aio import astream

        planner = None
        if plan is not None:
            from visagent.planners.scripted import ScriptedPlanner

            planner = ScriptedPlanner(plan)  # an invalid plan: UsageError, a 400
        gate = self.get_gate()
        await gate.enter()
        trace = str(Path(self.settings.trace_dir).expanduser() / "{run_id}.jsonl") if self.settings.trace_dir else None
        kept = None
        if session_id is not None:
            try:  # every path a planner's tool call names must lie in the allowed roots too (none: no paths)
                kept = self.sessions.acquire(session_id, lambda: self.agent.session(allowed_roots=list(self.roots)), tmp)
            except SessionProblem as exc:
                gate.leave()
                raise Problem(exc.status, exc.detail) from None
            session = kept.session
        else:  # the request's own uploads are in its temporary folder
            session = self.agent.session(allowed_roots=[*self.roots, tmp])
            session.history = [dict(h) for h in history or []]

        def done(_: Any = None) -> None:
            gate.leave()
            if kept is not None:
                self.sessions.release(kept)
            else:
                shutil.rmtree(tmp, ignore_errors=True)

        # uploads are deleted after the request, so a trace keeps copies of every input
        run = astream(
            self.agent, question, sources, executor=self.executor, max_steps=max_steps, trace_path=trace, copy_inputs=True,
            session=session, planner=planner,
        )  # fmt: skip
        run.kept = kept.id if kept is not None else None  # type: ignore[attr-defined]
        run.deadline = asyncio.get_running_loop().time() + self.settings.timeout_s
        try:  # the time waiting for a slot does not count; loading the media does
            await asyncio.wait_for(run.start(), self.settings.timeout_s)
        except asyncio.TimeoutError:
            run.stop()
            done()
            raise Problem(504, _timeout_message(self.settings.timeout_s)) from None
        except UsageError as exc:  # name the upload, not the server's temporary copy of it
            done()
            raise UsageError(re.sub(re.escape(str(tmp)) + r"/\d+_", "", str(exc))) from None
        except BaseException:
            run.stop()  # e.g. the request timed out: the media still loading are not loaded
            done()
            raise
        assert run.worker is not None
        run.worker.add_done_callback(done)
        return run


def _is_file(path: str) -> bool:
    try:
        return Path(path).is_file()
    except OSError:
        return False  # the media store names the problem


def _answer_json(answer: "Answer", include_trace: bool, session: str | None = None) -> dict[str, Any]:
    data = answer.model_dump(mode="json")
    if not include_trace:
        data["trace"] = {"meta": data["trace"]["meta"], "steps": []}
    if session is not None:  # the kept session this answer belongs to: pass it to continue
        data["session"] = session
    return json.loads(scrub(json.dumps(data)))


def _error_for(exc: BaseException) -> Problem:
    if isinstance(exc, Problem):
        return exc
    if isinstance(exc, UsageError):
        return Problem(400, str(exc) or type(exc).__name__)
    log.error("request failed", exc_info=exc)
    return Problem(500, f"internal error ({type(exc).__name__}); see the server log")


def create_app(agent: "Agent", settings: ServerSettings | dict[str, Any] | None = None) -> FastAPI:
    """The FastAPI app serving ``agent`` under ``settings`` (a ServerSettings, a dict, or None:
    the agent config's ``server:`` section)."""
    from contextlib import asynccontextmanager

    from visagent.types import Answer

    if settings is None:
        settings = load_settings(agent.config, environ={})
    elif isinstance(settings, dict):
        settings = load_settings(None, environ={}, **settings)
    srv = _Server(agent, settings)
    mcp_endpoint: list[Any] = []  # the MCP endpoint, where the mcp extra is installed

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        srv.get_gate()
        if mcp_endpoint:
            async with mcp_endpoint[0].run():
                yield
        else:
            yield
        srv.executor.shutdown(wait=False, cancel_futures=True)

    try:
        from importlib.metadata import version

        app_version = version("visagent")
    except Exception:  # noqa: BLE001
        app_version = "0"
    app = FastAPI(
        title="visagent",
        version=app_version,
        description="Ask questions about images and videos; get answers grounded in boxes, masks and text.",
        lifespan=lifespan,
    )
    app.state.visagent = srv
    app.add_middleware(BodyLimit, limit=settings.max_request_bytes)
    try:  # streamable-HTTP MCP at /mcp: the same token, roots and per-client limits
        from visagent.mcp_server import Dispatch, McpHttpEndpoint

        mcp_endpoint.append(McpHttpEndpoint(agent, token=settings.token, allowed_roots=srv.roots, images=settings.mcp_images))
        app.add_middleware(Dispatch, endpoint=mcp_endpoint[0])
    except ImportError:
        log.info("the mcp extra is not installed: no MCP endpoint at /mcp")
    app.add_middleware(PerClientLimit, max_requests=settings.max_requests_per_client)

    @app.exception_handler(Problem)
    async def _problem(_: Request, exc: Problem) -> JSONResponse:
        return JSONResponse({"detail": exc.detail}, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        return JSONResponse({"detail": detail.splitlines()[0] if detail else "error"}, status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": _one_line_validation(exc)}, status_code=422)

    from starlette.requests import ClientDisconnect

    @app.exception_handler(ClientDisconnect)
    async def _gone(_: Request, exc: ClientDisconnect) -> JSONResponse:  # nobody reads it; no traceback
        log.info("the client went away before its request was read")
        return JSONResponse({"detail": "the client went away"}, status_code=400)

    @app.exception_handler(Exception)
    async def _crash(_: Request, exc: Exception) -> JSONResponse:
        problem = _error_for(exc)
        return JSONResponse({"detail": problem.detail}, status_code=problem.status)

    bearer = HTTPBearer(auto_error=False, description="the server's token (--token or VISAGENT_TOKEN)")

    def auth(request: Request, _: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        srv.check_token(request.headers.get("authorization"))

    errors = {
        code: {"model": ErrorBody, "description": text}
        for code, text in (
            (400, "bad input (one-line reason)"),
            (401, "missing or wrong bearer token"),
            (403, "server-side path outside the allowed roots, or plans refused (server.allow_plans)"),
            (404, "unknown or expired session"),
            (409, "the session is answering another question"),
            (413, "request body or image over the limits"),
            (415, "unsupported content type"),
            (422, "invalid request body"),
            (429, "too many requests in flight"),
            (504, "the run took longer than the per-request timeout"),
        )
    }
    from visagent.openai_api import MODEL_ID, add_routes

    add_routes(app, srv, auth, errors)

    multipart_schema = {
        "type": "object",
        "required": ["files", "question"],
        "properties": {
            "files": {"type": "array", "items": {"type": "string", "format": "binary"}, "minItems": 1},
            "question": {"type": "string", "minLength": 1},
            "max_steps": {"type": "integer", "minimum": 1},
            "include_trace": {"type": "boolean"},
            "session": {"type": "string", "description": "\"new\" opens a kept session; its id continues it"},
        },
    }
    ask_body = {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/AskRequest"}},
                "multipart/form-data": {"schema": multipart_schema},
            },
        }
    }

    async def _begin(request: Request) -> tuple[Any, bool]:
        """Parse the request and start its run (the media accepted) -> (run, include_trace)."""
        tmp = Path(tempfile.mkdtemp(prefix="visagent-http-"))
        try:
            parsed = await srv.parse(request, tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        try:
            run = await srv.start(
                parsed.question, parsed.sources, parsed.max_steps, tmp, session_id=parsed.session, plan=parsed.plan
            )
        except BaseException as exc:
            if not srv.sessions.holds(tmp):  # a kept session's folder goes with the session
                shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(exc, Exception):
                raise _error_for(exc) from None
            raise
        return run, parsed.include_trace

    @app.post(
        "/v1/ask",
        dependencies=[Depends(auth)],
        responses={200: {"model": Answer, "description": "the answer (see its status)"}, **errors},
        openapi_extra=ask_body,
        summary="Answer a question about uploaded, inline or server-side media",
    )
    async def ask(request: Request) -> JSONResponse:
        run, include_trace = await _begin(request)
        loop = asyncio.get_running_loop()
        try:
            answer = await asyncio.wait_for(run.result(), max((run.deadline or 0.0) - loop.time(), 0.001))
        except asyncio.TimeoutError:
            run.stop()
            raise Problem(504, _timeout_message(settings.timeout_s)) from None
        except asyncio.CancelledError:
            run.stop()  # the client went away
            raise
        except Exception as exc:  # noqa: BLE001 - mapped to a one-line error
            raise _error_for(exc) from None
        return JSONResponse(_answer_json(answer, include_trace, run.kept))

    @app.post(
        "/v1/ask/stream",
        dependencies=[Depends(auth)],
        responses={
            200: {
                "description": "server-sent events: `step` (a step JSON) per step, then `answer` (the Answer JSON) or `error` ({detail})",
                "content": {"text/event-stream": {"schema": {"type": "object", "description": "each event's data: a step, the Answer, or {detail}"}}},
            },
            **errors,
        },
        openapi_extra=ask_body,
        response_class=StreamingResponse,
        summary="Like /v1/ask, streaming each step as a server-sent event",
    )
    async def ask_stream(request: Request) -> StreamingResponse:
        run, include_trace = await _begin(request)  # media problems are plain HTTP errors
        loop = asyncio.get_running_loop()
        deadline = run.deadline or loop.time() + settings.timeout_s

        async def events() -> AsyncIterator[bytes]:
            steps = run.__aiter__()
            if run.run is not None:  # the run's metadata first, as a trace file starts with it
                yield _sse("meta", scrub(run.run.trace.meta.model_dump_json()))
            try:
                while True:
                    try:
                        step = await asyncio.wait_for(steps.__anext__(), max(deadline - loop.time(), 0.001))
                    except StopAsyncIteration:
                        break
                    except asyncio.TimeoutError:
                        yield _sse("error", json.dumps({"detail": _timeout_message(settings.timeout_s)}))
                        return
                    except Exception as exc:  # noqa: BLE001 - the stream's last event says what went wrong
                        yield _sse("error", json.dumps({"detail": _error_for(exc).detail}))
                        return
                    yield _sse("step", step.model_dump_json())
                assert run.answer is not None
                yield _sse("answer", json.dumps(_answer_json(run.answer, include_trace, run.kept)))
            finally:
                run.stop()

        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    @app.get("/v1/tools", dependencies=[Depends(auth)], responses=errors, summary="The tools' specs")
    async def list_tools() -> list[dict[str, Any]]:
        return [type(t).spec() for t in agent.tools.values()]

    @app.get("/v1/models", dependencies=[Depends(auth)], responses=errors, summary="Configured checkpoints and resident models")
    async def list_models() -> dict[str, Any]:
        cfg = agent.config
        return {
            # OpenAI's list shape (client.models.list()), then visagent's own view
            "object": "list",
            "data": [{"id": MODEL_ID, "object": "model", "created": int(srv.started), "owned_by": "visagent"}],
            "profile": cfg.profile,
            "planner": getattr(agent._planner, "name", None) or str(agent._planner_spec or cfg.planner.kind),
            "checkpoints": {f: {"checkpoint": m.checkpoint, "backend": m.backend, "revision": m.revision} for f, m in cfg.models.items()},
            "pool": agent.pool.stats(),
        }

    @app.get("/healthz", summary="Liveness and load (no auth)")
    async def healthz() -> dict[str, Any]:
        gate = srv.get_gate()
        return {
            "status": "ok",
            "service": "visagent",  # how `visagent ask` recognizes a server to use
            "version": app_version,
            "profile": agent.config.profile,
            "planner": _planner_kind(agent),
            "uptime_s": round(time.time() - srv.started, 3),
            "active": gate.active,
            "queued": gate.waiting,
            "max_concurrency": gate.limit,
            "max_queue": gate.queue,
            "served": gate.served,
            "refused": gate.refused,
            **srv.sessions.stats(),
            **(agent.pool.health() if hasattr(agent.pool, "health") else {}),  # e.g. Ray Serve deployments
        }

    @app.delete(
        "/v1/sessions/{session_id}",
        dependencies=[Depends(auth)],
        responses=errors,
        summary="Close a kept session",
    )
    async def close_session(session_id: str) -> dict[str, Any]:
        if not srv.sessions.close(session_id):
            raise Problem(404, "unknown or expired session")
        return {"closed": session_id}

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            comps = schema.setdefault("components", {}).setdefault("schemas", {})
            ask_schema = AskRequest.model_json_schema(ref_template="#/components/schemas/{model}")
            comps.update(ask_schema.pop("$defs", {}))
            comps["AskRequest"] = ask_schema
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    if settings.ui:  # the web page at /ui: the same token, limits and media checks
        from visagent.ui import mount_ui

        mount_ui(app, agent, settings, checks=srv)
    return app


def _planner_kind(agent: "Agent") -> str:
    """The planner's kind (``llava``, ``openai``, ``langchain``, ``script``), never a plan's path."""
    spec = agent._planner_spec
    if spec is None:
        return agent.config.planner.kind
    if isinstance(spec, str):
        return spec.split(":", 1)[0]
    return str(getattr(spec, "name", type(spec).__name__)).split(":", 1)[0]


def _timeout_message(timeout_s: float) -> str:
    return f"the run took longer than {timeout_s:g} s (server.timeout_s); it was stopped"


def _sse(event: str, data: str) -> bytes:
    return f"event: {event}\ndata: {data}\n\n".encode()


def serve(agent: "Agent", settings: ServerSettings, log_level: str = "warning") -> None:
    """Run the app with uvicorn until interrupted. Refuses a non-loopback host without a token."""
    import uvicorn

    if not is_loopback(settings.host) and not settings.token:
        raise UsageError(
            f"refusing to listen on {settings.host} without a token: pass --token (or set VISAGENT_TOKEN), or use --host 127.0.0.1"
        )
    from visagent.netlimits import deadline_protocol

    app = create_app(agent, settings)
    protocol = deadline_protocol(settings.read_timeout_s, settings.max_connections_per_client)
    uvicorn.run(
        app, host=settings.host, port=settings.port, log_level=log_level, access_log=False,
        http=protocol, limit_concurrency=settings.max_connections, timeout_graceful_shutdown=5,
    )  # fmt: skip
