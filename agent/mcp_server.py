"""visagent as an MCP server (the official ``mcp`` SDK): ``visagent mcp`` over stdio, and
streamable HTTP at ``/mcp`` on ``visagent serve`` (same token, roots and limits).

Tools: one MCP tool per visagent tool (same names, input schemas from the tools' Input models),
plus ``ask`` (the whole agent: ``question`` and ``media``, as the HTTP API takes them) returning
the grounded answer with its evidence. Media arguments take a media id (``img_0``), a path (inside
the allowed roots), ``sample:NAME``, a URL (where ``limits.allow_urls``) or a ``data:...;base64,``
URL, or an MCP embedded resource ``{"uri", "mimeType", "blob"}``. Results: the typed output (or the Answer) as structured content, the observation (or the
answer with its evidence) as text, and the regions drawn on the image as image content
(``images=False``, ``visagent mcp --no-images`` or ``server.mcp_images: false``, for clients that
cannot show images). Each MCP session is a visagent session:
ids such as ``det_1_0`` from one call are valid in the next. Errors are MCP error results
(``isError``), never a crash. Needs the ``mcp`` extra.
"""

from __future__ import annotations

import base64
import io
import logging
import threading
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from visagent.agent import Agent

log = logging.getLogger(__name__)

ASK_SCHEMA = {
    "type": "object",
    "properties": {
        "question": {"type": "string", "minLength": 1, "maxLength": 4000, "description": "the question about the media"},
        "media": {
            "type": "array", "minItems": 1, "maxItems": 16, "items": {"type": "string"},
            "description": "media ids of this session (img_0), file paths, sample:NAME, URLs or data: URLs; in order img_0, img_1, ...",
        },
        "max_steps": {"type": "integer", "minimum": 1, "maximum": 32},
    },
    "required": ["question", "media"],
    "additionalProperties": False,
}  # fmt: skip
ASK_DESCRIPTION = (
    "Answer a question about images or videos with visagent's visual tools (detection, segmentation, captioning, "
    "OCR, ...); returns the answer with its evidence (region ids, boxes, scores). Region ids stay valid in later calls."
)


MAX_SESSIONS = 256
SESSION_META = "visagent/session"


def build_server(
    agent: "Agent", *, allowed_roots: Sequence[str | Path] | None = None, images: bool = True, single_session: bool = False
) -> Any:
    """The ``mcp`` low-level ``Server`` for ``agent`` (see the module docstring)."""
    import anyio
    import anyio.lowlevel
    import mcp_types as types
    from mcp.server.lowlevel import Server

    from visagent.errors import ToolError, UsageError
    from visagent.langchain import format_answer
    from visagent.secrets import scrub
    from visagent.session import CallSession

    by_id: "OrderedDict[str, CallSession]" = OrderedDict()
    lock = threading.Lock()

    def session_for(ctx: Any) -> tuple[str, CallSession]:
        """The visagent session of a request: the process's one session over stdio (one client),
        else the one named by the streamable-HTTP session id or by ``_meta["visagent/session"]``
        (which every result carries, for clients of the stateless protocol era), else a new one."""
        sid = "stdio" if single_session else (_session_id(ctx) or _meta_session(ctx))
        with lock:
            if sid is None or sid not in by_id:
                sid = sid or uuid.uuid4().hex
                by_id[sid] = CallSession(agent, allowed_roots=allowed_roots)
                while len(by_id) > MAX_SESSIONS:
                    by_id.popitem(last=False)
            by_id.move_to_end(sid)
            return sid, by_id[sid]

    def error(message: str) -> Any:
        return types.CallToolResult(content=[types.TextContent(type="text", text=scrub(message))], is_error=True)

    def picture(session: CallSession, data: Any) -> list[Any]:
        from visagent.render import iter_regions, render_regions

        regions = list(iter_regions(data))
        if not images or not regions:
            return []
        try:
            img = render_regions(session.media, regions, include_all=False)
        except Exception:  # noqa: BLE001 - the picture is a courtesy; the result stands without it
            log.debug("could not draw the regions", exc_info=True)
            return []
        buf = io.BytesIO()
        img.save(buf, "PNG")
        return [types.ImageContent(type="image", data=base64.b64encode(buf.getvalue()).decode(), mime_type="image/png")]

    async def list_tools(ctx: Any, params: Any) -> Any:
        tools = [
            types.Tool(name=t.name, description=t.description, input_schema=type(t).input_schema())
            for t in agent.tools.values()
        ]
        tools.append(types.Tool(name="ask", description=ASK_DESCRIPTION, input_schema=ASK_SCHEMA))
        return types.ListToolsResult(tools=tools)

    def reporter(ctx: Any) -> Any:
        """``progress(message, done, total)`` for a worker thread: MCP progress notifications
        (a no-op for a request that asked for none)."""

        token = anyio.lowlevel.current_token()  # the tool runs in the runner's own threads

        def progress(message: str, done: int, total: int) -> None:
            try:
                anyio.from_thread.run(ctx.session.report_progress, float(done), float(total), message, token=token)
            except Exception:  # noqa: BLE001 - progress is best effort
                log.debug("progress notification failed", exc_info=True)

        return progress

    def run_tool(session: CallSession, name: str, args: dict[str, Any], progress: Any) -> Any:
        content, output = session.call_tool(name, args, progress=progress)
        data = output.model_dump(mode="json")
        return types.CallToolResult(
            content=[types.TextContent(type="text", text=scrub(content)), *picture(session, data)], structured_content=data
        )

    def run_ask(session: CallSession, args: dict[str, Any], progress: Any) -> Any:
        question, media = args.get("question"), args.get("media")
        if not isinstance(question, str) or not question.strip() or not isinstance(media, list) or not media:
            return error("ask needs a non-empty question and a non-empty media list")
        for item in media[:16]:  # registered in the session (ids of earlier calls stay as they are)
            session._resolve(item, [])
        answer = agent.ask(question, session=session, max_steps=args.get("max_steps"), progress=progress)
        data = answer.model_dump(mode="json")
        data["trace"] = {"meta": {"run_id": answer.trace.meta.run_id}, "steps": []}  # the answer, not the whole trace
        regions = [e.region for e in answer.evidence if e.region]
        return types.CallToolResult(
            content=[types.TextContent(type="text", text=scrub(format_answer(answer))), *picture(session, regions)],
            structured_content=data,
            is_error=not answer.ok,
        )

    async def call_tool(ctx: Any, params: Any) -> Any:
        name, args = params.name, dict(params.arguments or {})
        sid, session = session_for(ctx)
        try:
            if name == "ask":
                result = await anyio.to_thread.run_sync(run_ask, session, args, reporter(ctx))
            elif name not in agent.tools:
                result = error(f"unknown tool '{name}'; available: {', '.join([*agent.tools, 'ask'])}")
            else:
                result = await anyio.to_thread.run_sync(run_tool, session, name, args, reporter(ctx))
        except (ToolError, UsageError) as exc:
            result = error(str(exc))
        except Exception as exc:  # noqa: BLE001 - an error result, never a crash
            log.debug("mcp tool %s failed", name, exc_info=True)
            result = error(f"{name} failed: {type(exc).__name__}: {exc}")
        result.meta = {**(result.meta or {}), SESSION_META: sid}
        return result

    from importlib.metadata import PackageNotFoundError, version

    try:
        ver = version("visagent")
    except PackageNotFoundError:  # pragma: no cover
        ver = "0"
    return Server("visagent", version=ver, instructions=ASK_DESCRIPTION, on_list_tools=list_tools, on_call_tool=call_tool)


def _meta_session(ctx: Any) -> str | None:
    meta = getattr(ctx, "meta", None)
    value = meta.get(SESSION_META) if isinstance(meta, dict) else getattr(meta, SESSION_META, None) if meta is not None else None
    return str(value)[:64] if value else None


def _session_id(ctx: Any) -> str | None:
    """The streamable-HTTP session id of a request, where there is one."""
    request = getattr(ctx, "request", None)
    headers = getattr(request, "headers", None)
    if headers is not None:
        sid = headers.get("mcp-session-id")
        if sid:
            return str(sid)
    return None


async def serve_stdio(agent: "Agent", *, images: bool = True) -> None:
    """Serve ``agent`` over this process's stdin / stdout until the client closes them."""
    from mcp.server.stdio import stdio_server

    server = build_server(agent, allowed_roots=agent.config.limits.allowed_roots, images=images, single_session=True)
    async with stdio_server() as (read, write):
        await server.run(read, write, server.create_initialization_options())


class McpHttpEndpoint:
    """Streamable-HTTP MCP at ``path`` (``/mcp``) of the HTTP server, behind the server's bearer
    token (an ASGI app for the requests ``handles`` accepts). ``run()`` is the context the server's
    lifespan enters (the SDK's session manager)."""

    def __init__(self, agent: "Agent", *, token: str | None, allowed_roots: Sequence[str | Path], images: bool = True, path: str = "/mcp") -> None:
        from mcp.server.streamable_http_manager import StreamableHTTPSessionManager

        self.token = token
        self.path = path
        server = build_server(agent, allowed_roots=allowed_roots, images=images)
        self.manager = StreamableHTTPSessionManager(app=server)

    def run(self) -> Any:
        return self.manager.run()

    def handles(self, scope: dict[str, Any]) -> bool:
        return scope["type"] == "http" and scope.get("path", "").rstrip("/") == self.path

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if self.token:
            import hmac

            given = dict(scope.get("headers", ())).get(b"authorization", b"").decode(errors="replace")
            scheme, _, value = given.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), self.token.encode()):
                body = b'{"detail": "missing or wrong bearer token (send \'Authorization: Bearer TOKEN\')"}'
                headers = [(b"content-type", b"application/json"), (b"www-authenticate", b"Bearer")]
                await send({"type": "http.response.start", "status": 401, "headers": headers})
                await send({"type": "http.response.body", "body": body})
                return
        await self.manager.handle_request(scope, receive, send)


class Dispatch:
    """ASGI middleware: requests ``endpoint.handles`` go to ``endpoint``, the rest to the app."""

    def __init__(self, app: Any, endpoint: McpHttpEndpoint) -> None:
        self.app = app
        self.endpoint = endpoint

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        target = self.endpoint if self.endpoint.handles(scope) else self.app
        await target(scope, receive, send)
