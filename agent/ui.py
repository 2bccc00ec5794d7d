"""The web page (Gradio): ``visagent ui``, and ``/ui`` on ``visagent serve --ui``.

A person uploads images and videos (several at once; drag and drop, paste or the file picker) or
picks a bundled sample, asks, and watches each step of the run arrive (planner decision, tool call
and observation, errors), then the answer. The media are shown in a gallery with the answer's
evidence drawn (boxes with labels and scores, masks, OCR lines); selecting an evidence id
highlights its region. Follow-up questions continue the same visagent ``Session`` (one per
browser session), so earlier ids stay citable ("segment det_1_0"). Each turn's trace (JSONL) and
HTML report can be downloaded.

The page is a front door like the HTTP API: it turns page events into ``Session`` + ``Agent``
calls and nothing more. It keeps the server's rules: the ``server:`` limits (files per question,
pixels, question length, ``max_steps``, per-turn timeout, runs at once and waiting), the same
media checks and one-line errors, and the same token (``TokenGate``: ``Authorization: Bearer
TOKEN``, or ``?token=TOKEN`` once, which sets a cookie for the page).

Gradio is imported only when a page is built (the ``ui`` extra).
"""

from __future__ import annotations

import hmac
import html
import json
import logging
import re
import shutil
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode

from visagent.errors import UsageError

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

    from visagent.agent import Agent, RunStream
    from visagent.config import Config, ServerSettings
    from visagent.server import _Server
    from visagent.session import Session
    from visagent.types import Answer, Evidence, Step

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_PORT", "Page", "TokenGate", "build_blocks", "create_ui_app", "mount_ui", "serve_ui"]

#: the port ``visagent ui`` listens on unless told otherwise
DEFAULT_PORT = 7860
#: seconds a browser session's state (its visagent session, uploads, downloads) is kept unused
SESSION_TTL_S = 3600
#: the cookie the page's token is kept in after ``?token=``
COOKIE = "visagent_token"
#: the planner kinds the settings panel offers besides the one the page was started with
PLANNER_KINDS = ("llava", "openai", "langchain")

CSS = """
#errors:empty{display:none}
#errors .ui-error{color:#c92a2a;font-weight:600;margin:2px 0}
#evidence-detail .ui-detail{font-family:ui-monospace,Menlo,monospace;font-size:12px;white-space:pre-wrap}
"""


def _gradio() -> Any:
    try:
        import gradio
    except ModuleNotFoundError:
        raise UsageError("the web page needs the ui extra: pip install 'visagent[ui]'") from None
    return gradio


def check_exposure(settings: "ServerSettings") -> None:
    """``UsageError`` for a non-loopback host without a token (as ``visagent serve`` refuses)."""
    from visagent.server import is_loopback

    if not is_loopback(settings.host) and not settings.token:
        raise UsageError(
            f"refusing to listen on {settings.host} without a token: pass --token (or set VISAGENT_TOKEN), or use --host 127.0.0.1",
        )


# -- the token ----------------------------------------------------------------------------------
class TokenGate:
    """ASGI middleware: every request under ``prefix`` needs ``token``, sent as ``Authorization:
    Bearer TOKEN``, as the page's cookie, or once as ``?token=TOKEN``: that request is answered by
    a redirect to the same address without it, setting the cookie (HttpOnly, SameSite=Strict).
    Anything else gets 401 ``{"detail": "<one line>"}`` (a websocket is closed)."""

    def __init__(self, app: Any, token: str, prefix: str = "") -> None:
        self.app = app
        self.token = token.encode()
        self.prefix = prefix.rstrip("/")

    def _ok(self, given: str | None) -> bool:
        return given is not None and hmac.compare_digest(given.strip().encode(), self.token)

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        path = scope.get("path", "")
        if scope["type"] not in ("http", "websocket") or not (path == self.prefix or path.startswith(self.prefix + "/")):
            await self.app(scope, receive, send)
            return
        headers = {k.lower(): v.decode("latin-1") for k, v in scope.get("headers", ())}
        scheme, _, bearer = headers.get(b"authorization", "").partition(" ")
        cookie = SimpleCookie()
        try:
            cookie.load(headers.get(b"cookie", ""))
        except Exception:  # noqa: BLE001 - a malformed cookie header counts as none
            cookie = SimpleCookie()
        if (scheme.lower() == "bearer" and self._ok(bearer)) or (COOKIE in cookie and self._ok(cookie[COOKIE].value)):
            await self.app(scope, receive, send)
            return
        query = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        given = [v for k, v in query if k == "token"]
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        if given and self._ok(given[-1]):
            rest = urlencode([(k, v) for k, v in query if k != "token"])
            location = (scope.get("root_path", "") + path) + (f"?{rest}" if rest else "")
            morsel = f"{COOKIE}={given[-1]}; Path={self.prefix or '/'}; HttpOnly; SameSite=Strict"
            await send(
                {"type": "http.response.start", "status": 303, "headers": [(b"location", location.encode()), (b"set-cookie", morsel.encode())]}
            )
            await send({"type": "http.response.body", "body": b""})
            return
        body = json.dumps({"detail": "missing or wrong token: open the page as ...?token=TOKEN, or send 'Authorization: Bearer TOKEN'"}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), (b"www-authenticate", b"Bearer")],
            }
        )
        await send({"type": "http.response.body", "body": body})


# -- one browser session ------------------------------------------------------------------------
@dataclass
class Turn:
    """A finished turn: its question, answer and the files offered for download."""

    question: str
    answer: "Answer"
    files: list[Path] = field(default_factory=list)


class Visit:
    """One browser session: a visagent ``Session`` over one agent, the folder holding its uploads
    and downloads, and its turns. One question at a time (``lock``)."""

    def __init__(self, page: "Page", profile: str) -> None:
        self.profile = profile
        self.agent = page.agent(profile)
        self.folder = Path(tempfile.mkdtemp(prefix="visit-", dir=page.root))
        # paths a planner's tool call names must lie in the server's roots, or be this visit's uploads
        self.session: "Session" = self.agent.session(allowed_roots=[*page.checks.roots, self.folder])
        self.inputs: list[str] = []  # media ids added by the person, in order
        self.names: dict[str, str] = {}  # media id -> the uploaded file's name
        self.pixels = [page.settings.max_total_pixels]  # decoded pixels left (server.max_total_pixels)
        self.turns: list[Turn] = []
        self.lock = threading.Lock()
        self._uploads = 0

    @property
    def evidence(self) -> list["Evidence"]:
        """The last turn's evidence."""
        return list(self.turns[-1].answer.evidence) if self.turns else []

    def upload_path(self, name: str) -> Path:
        from visagent.server import _safe_name

        self._uploads += 1
        return self.folder / _safe_name(name, self._uploads)

    def close(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def _close(visit: Any) -> None:
    if isinstance(visit, Visit):
        visit.close()


# -- what the page's events share ----------------------------------------------------------------
class Page:
    """The agents the page runs (one per profile, sharing one model pool), the server's limits and
    media checks (``visagent.server``), and the folder of the visits' files.

    ``configure(profile) -> Config`` builds the configuration of another profile (None: the
    page keeps ``agent``'s profile); ``planner``: the planner spec the page was started with."""

    def __init__(
        self,
        agent: "Agent",
        settings: "ServerSettings",
        *,
        configure: Callable[[str], "Config"] | None = None,
        planner: str | None = None,
        checks: "_Server | None" = None,
    ) -> None:
        from visagent.server import _Server

        self.settings = settings
        self.configure = configure
        self.planner = planner
        self.checks = checks if checks is not None else _Server(agent, settings)
        self.profile = agent.config.profile
        self._agents: dict[str, Agent] = {self.profile: agent}
        self._lock = threading.Lock()
        self.root = Path(tempfile.mkdtemp(prefix="visagent-ui-"))
        weakref.finalize(self, shutil.rmtree, str(self.root), True)

    # -- settings -------------------------------------------------------------------------------
    @property
    def profiles(self) -> list[str]:
        from visagent.config import PROFILES

        return list(PROFILES) if self.configure is not None else [self.profile]

    def planner_choices(self) -> list[tuple[str, str]]:
        """(label, value) pairs; the value "" is the planner the page was started with."""
        base = self._agents[self.profile]
        own = getattr(base._planner, "name", None) or str(self.planner or base.config.planner.kind)
        return [(f"{own} (as started)", ""), *((k, k) for k in PLANNER_KINDS if k != own)]

    @property
    def max_steps(self) -> int:
        return self.checks.max_steps

    def agent(self, profile: str) -> "Agent":
        if profile not in self.profiles:
            raise UsageError(f"unknown profile '{profile}'; available: {', '.join(self.profiles)}")
        with self._lock:
            found = self._agents.get(profile)
            if found is None:
                from visagent.agent import Agent

                base = self._agents[self.profile]
                assert self.configure is not None
                found = self._agents[profile] = Agent(self.configure(profile), planner=self.planner, pool=base.pool)
            return found

    def visit(self, profile: str | None = None) -> Visit:
        return Visit(self, profile or self.profile)

    # -- media ----------------------------------------------------------------------------------
    def add_media(self, visit: Visit, files: Sequence[str] = (), samples: Sequence[str] = ()) -> tuple[list[str], list[str]]:
        """Add uploaded files (paths) and ``sample:NAME`` images to ``visit``'s session, each
        checked as the HTTP API checks a request's media -> (``"photo.png = img_0"`` per medium
        added, one-line errors)."""
        from visagent.server import Problem

        added: list[str] = []
        errors: list[str] = []
        try:
            self.checks.check_count(len(visit.inputs) + len(files) + len(samples))
        except Problem as exc:
            return [], [exc.detail]
        for source in files:
            name = Path(source).name
            path = visit.upload_path(name)
            left = visit.pixels[0]
            try:
                shutil.copyfile(source, path)
                self.checks.check_pixels(path, name, visit.pixels)
                media_id = visit.session.add_media(str(path))
            except (Problem, UsageError, OSError) as exc:
                visit.pixels[0] = left
                path.unlink(missing_ok=True)
                errors.append(self._one_line(exc, visit))
                continue
            visit.inputs.append(media_id)
            visit.names[media_id] = name
            added.append(f"{name} = {media_id}")
        for sample in samples:
            try:
                media_id = visit.session.add_media(f"sample:{sample}")
            except UsageError as exc:
                errors.append(self._one_line(exc, visit))
                continue
            if media_id not in visit.inputs:
                visit.inputs.append(media_id)
            added.append(f"sample:{sample} = {media_id}")
        return added, errors

    @staticmethod
    def _one_line(exc: BaseException, visit: Visit) -> str:
        detail = getattr(exc, "detail", None) or (exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc))
        # name the upload, not the page's copy of it (as the HTTP API does)
        detail = re.sub(re.escape(str(visit.folder)) + r"/\d+_", "", str(detail))
        return (detail.splitlines() or [type(exc).__name__])[0]

    # -- turns ----------------------------------------------------------------------------------
    def start(self, visit: Visit, question: str, planner: str | None = None, max_steps: int | None = None) -> "RunStream":
        """The next turn of ``visit``; ``UsageError`` (one line) for a question the server would
        refuse, no media yet, or an unknown planner."""
        from visagent.server import Problem

        try:
            self.checks.check_question(question)
            self.checks.check_steps(max_steps)
        except Problem as exc:
            raise UsageError(exc.detail) from None
        if not len(visit.session.media):
            raise UsageError("add an image or video first: attach files to the question, or pick a sample")
        if planner and planner not in PLANNER_KINDS:
            raise UsageError(f"unknown planner '{planner}'; available here: {', '.join(PLANNER_KINDS)}")
        trace = None
        if self.settings.trace_dir:
            trace = Path(self.settings.trace_dir).expanduser() / "{run_id}.jsonl"
        else:
            trace = visit.folder / f"turn-{len(visit.turns) + 1}-trace.jsonl"
        return visit.agent.stream(
            question, (), planner=planner or None, max_steps=max_steps, session=visit.session, trace_path=trace,
            copy_inputs=bool(self.settings.trace_dir),
        )  # fmt: skip

    def follow(self, run: "RunStream") -> Iterator["Step"]:
        """The run's steps as they happen; past ``server.timeout_s`` the run is stopped at its next
        step and ``UsageError`` says so."""
        from visagent.server import _timeout_message

        deadline = time.monotonic() + self.settings.timeout_s
        steps = iter(run)
        try:
            for step in steps:
                yield step
                if time.monotonic() > deadline:
                    raise UsageError(_timeout_message(self.settings.timeout_s))
        finally:
            close = getattr(steps, "close", None)
            if close is not None:
                close()

    def finish(self, visit: Visit, run: "RunStream") -> Turn:
        """Record the ended turn: its trace and HTML report for download."""
        from visagent.report import write_report

        answer = run.answer
        assert answer is not None
        turn = Turn(run.question, answer)
        k = len(visit.turns) + 1
        if run.writer is not None and run.writer.path.is_file():
            trace = run.writer.path
            if trace.parent != visit.folder:  # written to server.trace_dir: a copy to download
                trace = visit.folder / f"turn-{k}-trace.jsonl"
                shutil.copyfile(run.writer.path, trace)
            turn.files.append(trace)
        report = visit.folder / f"turn-{k}-report.html"
        try:
            write_report(answer, run.media, report)
            turn.files.append(report)
        except Exception as exc:  # noqa: BLE001 - the answer is shown all the same
            log.warning("cannot write the report of turn %d: %s", k, exc)
        visit.turns.append(turn)
        return turn

    # -- drawing --------------------------------------------------------------------------------
    def gallery(self, visit: Visit, focus: str | None = None) -> tuple[list[tuple["Image.Image", str]], int | None]:
        """One (image, caption) per image of the session with the last turn's evidence drawn, and
        the index of the image holding ``focus`` (an evidence id, drawn highlighted) or None."""
        from visagent.render import annotate, region_tiles

        if not len(visit.session.media):
            return [], None
        regions = [dict(ev.region) for ev in visit.evidence if ev.region]
        target = next((r for r in regions if r.get("id") == focus), None)

        def draw(image: "Image.Image", media_id: str, found: list[dict[str, Any]]) -> "Image.Image":
            if target is None or target.get("image") != media_id:
                return annotate(image, found)
            return highlight(image, found, target)

        try:
            tiles = region_tiles(visit.session.media, regions, draw=draw)
        except Exception as exc:  # noqa: BLE001 - an undrawable medium does not stop the page
            log.warning("cannot draw the evidence: %s", exc)
            return [], None
        selected = next((i for i, (mid, _, _) in enumerate(tiles) if target is not None and mid == target.get("image")), None)
        return [(image, f"{mid}  {visit.names[mid]}" if mid in visit.names else caption) for mid, image, caption in tiles], selected


def highlight(image: "Image.Image", regions: Sequence[dict[str, Any]], focus: dict[str, Any]) -> "Image.Image":
    """``regions`` drawn on ``image`` with ``focus`` highlighted: the rest of the image dimmed, its
    outline drawn thicker on top."""
    from PIL import Image

    from visagent.render import annotate

    base = annotate(image, [r for r in regions if r.get("id") != focus.get("id")])
    w, h = base.size
    x0, y0, x1, y1 = (float(v) for v in focus["box"])
    pad = max(2, round(max(w, h) / 160))
    box = (max(0, int(x0) - pad), max(0, int(y0) - pad), min(w, int(x1 + 1) + pad), min(h, int(y1 + 1) + pad))
    dim = Image.blend(base, Image.new("RGB", base.size, (0, 0, 0)), 0.6)
    if box[2] > box[0] and box[3] > box[1]:
        dim.paste(base.crop(box), box[:2])
    return annotate(dim, [focus], thickness=max(3, round(4 * max(w, h) / 640)))


# -- the page's text ------------------------------------------------------------------------------
_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~])")


def _md(text: str) -> str:
    """``text`` shown as it is in a Markdown message."""
    return _MD_SPECIAL.sub(r"\\\1", text)


def _errors_html(errors: Sequence[str]) -> str:
    return "".join(f'<div class="ui-error">error: {html.escape(e)}</div>' for e in errors)


def step_message(step: "Step") -> dict[str, Any] | None:
    """A chat message for one step: its one-line description (``describe_step``) as the title,
    the details (thought, arguments, observation, error) inside. None for the final step (the
    answer message follows)."""
    from visagent.types import ErrorStep, NoteStep, PlannerStep, ToolStep, describe_step

    title = describe_step(step)
    if len(title) > 240:
        title = title[:237] + "..."
    body: list[str] = []
    if isinstance(step, PlannerStep):
        if step.thought:
            body.append(f"thought: {step.thought}")
        act = step.action
        body.append(f"final answer: {act.answer}" if act.kind == "final" else f"call {act.tool} {json.dumps(act.args)}")
    elif isinstance(step, ToolStep):
        body.append(f"{step.tool} {json.dumps(step.args)}")
        body.append(step.observation)
    elif isinstance(step, ErrorStep):
        body.append(f"{step.code}: {step.message}")
    elif isinstance(step, NoteStep):
        body.append(step.message)
    else:
        return None
    return {"role": "assistant", "content": _md("\n".join(body)), "metadata": {"title": title, "status": "done"}}


def answer_message(answer: "Answer") -> dict[str, Any]:
    if answer.ok:
        text = _md(answer.answer)
        if answer.evidence:
            text += "\n\nevidence: " + ", ".join(f"`{ev.id}`" for ev in answer.evidence)
    else:
        text = f"no answer ({answer.status}): {_md(answer.error or '')}"
    for warning in answer.warnings:
        text += f"\n\nwarning: {_md(warning)}"
    return {"role": "assistant", "content": text}


def evidence_choices(visit: Visit) -> list[tuple[str, str]]:
    from visagent.render import region_label

    return [(region_label(ev.region) if ev.region else f"{ev.id} ({ev.tool})", ev.id) for ev in visit.evidence]


def evidence_detail(visit: Visit, ident: str | None) -> str:
    ev = next((e for e in visit.evidence if e.id == ident), None)
    if ev is None:
        return ""
    lines = [ev.describe()]
    if ev.region and ev.observation:
        lines.append(ev.observation)
    return f'<div class="ui-detail">{html.escape(chr(10).join(lines))}</div>'


# -- the Blocks app -------------------------------------------------------------------------------
def build_blocks(page: Page) -> Any:
    """The page as a ``gradio.Blocks`` (queued under the server's concurrency limits)."""
    gr = _gradio()
    from visagent.cli import TINY_NOTE
    from visagent.media import SAMPLES

    def reset_outputs(visit: Visit | None, note: str) -> tuple[Any, ...]:
        return (visit, [{"role": "assistant", "content": note}] if note else [], [], gr.Radio(choices=[], value=None), "", [], "")

    with gr.Blocks(title="visagent", analytics_enabled=False, delete_cache=(3600, SESSION_TTL_S)) as demo:
        visit_state = gr.State(None, time_to_live=SESSION_TTL_S, delete_callback=_close)
        gr.Markdown("## visagent\nAsk about images and videos; every answer comes with the evidence it rests on.")
        tiny_note = gr.Markdown(f"**note:** {_md(TINY_NOTE)}", visible=page.profile == "tiny", elem_id="tiny-note")
        with gr.Row():
            with gr.Column(scale=3):
                chat = gr.Chatbot(label="conversation", elem_id="chat", height=560, buttons=["copy"], feedback_options=None)
                box = gr.MultimodalTextbox(
                    file_count="multiple",
                    sources=["upload"],
                    placeholder="Ask about the media; drop, paste or attach images and videos",
                    show_label=False,
                    elem_id="ask",
                )
                errors = gr.HTML(elem_id="errors")
                with gr.Row():
                    sample = gr.Dropdown(list(SAMPLES), value="coffee", label="bundled sample", elem_id="sample", scale=3)
                    add_sample = gr.Button("Add sample", elem_id="add-sample", scale=1)
                    new_session = gr.Button("New session", elem_id="new-session", scale=1)
            with gr.Column(scale=2):
                gallery = gr.Gallery(
                    label="media and evidence", elem_id="gallery", columns=2, preview=True, object_fit="contain", height=460, format="png"
                )
                evidence = gr.Radio([], label="evidence (select one to highlight it)", elem_id="evidence")
                detail = gr.HTML(elem_id="evidence-detail")
                downloads = gr.File(label="trace (JSONL) and report (HTML) of each turn", file_count="multiple", interactive=False, elem_id="downloads")
                with gr.Accordion("Settings", open=False, elem_id="settings"):
                    profile = gr.Dropdown(
                        page.profiles, value=page.profile, label="profile", interactive=len(page.profiles) > 1, elem_id="profile",
                        info="changing it starts a new session",
                    )  # fmt: skip
                    planner = gr.Dropdown(page.planner_choices(), value="", label="planner", elem_id="planner")
                    max_steps = gr.Slider(
                        1, page.max_steps, value=min(page.max_steps, page.agent(page.profile).config.limits.max_steps), step=1,
                        label="max steps", elem_id="max-steps",
                    )  # fmt: skip

        def downloads_of(visit: Visit) -> list[str]:
            return [str(p) for turn in visit.turns for p in turn.files]

        def on_submit(message: Any, visit: Visit | None, history: list[Any], profile_name: str, planner_name: str, steps: float) -> Iterator[tuple[Any, ...]]:
            history = list(history or [])
            message = message or {}
            text = str(message.get("text") or "").strip()
            files = [f if isinstance(f, str) else f.get("path", "") for f in message.get("files") or []]
            try:
                visit = visit or page.visit(profile_name)
            except Exception as exc:  # noqa: BLE001 - e.g. a configuration that cannot be loaded
                yield visit, history, gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip(), _errors_html([_problem(exc)])
                return
            if not visit.lock.acquire(blocking=False):
                yield visit, gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip(), _errors_html(["a question is being answered; wait for its answer"])
                return
            try:
                yield from turn(visit, history, text, files, planner_name, int(steps))
            finally:
                visit.lock.release()

        def turn(visit: Visit, history: list[Any], text: str, files: list[str], planner_name: str, steps: int) -> Iterator[tuple[Any, ...]]:
            problems: list[str] = []
            if files:
                added, problems = page.add_media(visit, files)
                if added:
                    history.append({"role": "assistant", "content": _md("added " + ", ".join(added))})
            tiles, _ = page.gallery(visit)
            if problems or not text:
                keep = {"text": text, "files": []} if problems else None
                yield visit, history, keep, tiles, gr.skip(), gr.skip(), gr.skip(), _errors_html(problems)
                return
            try:
                run = page.start(visit, text, planner_name or None, steps)
            except Exception as exc:  # noqa: BLE001 - shown as one line
                yield visit, history, {"text": text, "files": []}, tiles, gr.skip(), gr.skip(), gr.skip(), _errors_html([_problem(exc)])
                return
            history.append({"role": "user", "content": _md(text)})
            yield visit, history, None, tiles, gr.skip(), gr.skip(), gr.skip(), ""
            failure = None
            try:
                for step in page.follow(run):
                    shown = step_message(step)
                    if shown is not None:
                        history.append(shown)
                        yield visit, history, gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
            except Exception as exc:  # noqa: BLE001 - the run's end is shown as one line
                failure = _problem(exc)
            if run.answer is None:
                yield visit, history, gr.skip(), tiles, gr.skip(), gr.skip(), gr.skip(), _errors_html([failure or "the run ended without an answer"])
                return
            page.finish(visit, run)
            answer = run.answer
            history.append(answer_message(answer) if failure is None else {"role": "assistant", "content": _md(f"no answer: {failure}")})
            tiles, _ = page.gallery(visit)
            shown_errors = [failure] if failure else ([] if answer.ok else [answer.error or answer.status])
            yield (
                visit, history, gr.skip(), tiles, gr.Radio(choices=evidence_choices(visit), value=None), "", downloads_of(visit),
                _errors_html(shown_errors),
            )  # fmt: skip

        def on_sample(name: str, visit: Visit | None, history: list[Any], profile_name: str) -> tuple[Any, ...]:
            history = list(history or [])
            try:
                visit = visit or page.visit(profile_name)
                added, problems = page.add_media(visit, samples=[name])
            except Exception as exc:  # noqa: BLE001
                return visit, history, gr.skip(), _errors_html([_problem(exc)])
            if added:
                history.append({"role": "assistant", "content": _md("added " + ", ".join(added))})
            tiles, _ = page.gallery(visit)
            return visit, history, tiles, _errors_html(problems)

        def on_evidence(ident: str | None, visit: Visit | None) -> tuple[Any, ...]:
            if visit is None:
                return gr.skip(), ""
            tiles, selected = page.gallery(visit, ident)
            return gr.Gallery(value=tiles, selected_index=selected), evidence_detail(visit, ident)

        def on_reset(visit: Visit | None, profile_name: str) -> tuple[Any, ...]:
            _close(visit)
            note = f"profile {profile_name}: a new session" if profile_name != page.profile else "a new session"
            return (*reset_outputs(None, note), gr.Markdown(visible=profile_name == "tiny"))

        private = {"api_visibility": "private"}
        box.submit(
            on_submit,
            [box, visit_state, chat, profile, planner, max_steps],
            [visit_state, chat, box, gallery, evidence, detail, downloads, errors],
            concurrency_id="run",
            **private,
        )
        add_sample.click(on_sample, [sample, visit_state, chat, profile], [visit_state, chat, gallery, errors], **private)
        evidence.input(on_evidence, [evidence, visit_state], [gallery, detail], **private)
        for trigger in (new_session.click, profile.input):
            trigger(on_reset, [visit_state, profile], [visit_state, chat, gallery, evidence, detail, downloads, errors, tiny_note], **private)
    demo.queue(default_concurrency_limit=page.settings.max_concurrency, max_size=page.settings.max_queue)
    return demo


def _problem(exc: BaseException) -> str:
    """One line for the page (an unexpected error is logged with its traceback, never shown)."""
    if isinstance(exc, UsageError):
        text = str(exc) or type(exc).__name__
    else:
        from visagent.server import _error_for

        text = _error_for(exc).detail
    return text.splitlines()[0]


# -- serving --------------------------------------------------------------------------------------
def _theme(gr: Any) -> Any:
    # system fonts: the page loads nothing from elsewhere
    return gr.themes.Default(font=["system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])


def mount_ui(app: Any, agent: "Agent", settings: "ServerSettings", *, path: str = "/ui", **page_options: Any) -> Page:
    """Mount the page on the FastAPI ``app`` at ``path``, behind ``settings.token`` when there is
    one (``TokenGate``). ``page_options``: ``Page``'s keyword arguments."""
    gr = _gradio()
    page = Page(agent, settings, **page_options)
    blocks = build_blocks(page)
    if settings.token:
        app.add_middleware(TokenGate, token=settings.token, prefix="" if path == "/" else path)
    gr.mount_gradio_app(
        app, blocks, path=path, allowed_paths=[str(page.root)], max_file_size=settings.max_request_bytes, ssr_mode=False,
        show_error=False, footer_links=[], theme=_theme(gr), css=CSS,
    )  # fmt: skip
    app.state.visagent_ui = page
    return page


def create_ui_app(agent: "Agent", settings: "ServerSettings", **page_options: Any) -> Any:
    """The FastAPI app of ``visagent ui``: the page at ``/``, with the HTTP server's request-size
    and per-client limits."""
    from fastapi import FastAPI

    from visagent.netlimits import PerClientLimit
    from visagent.server import BodyLimit

    app = FastAPI(title="visagent ui", docs_url=None, redoc_url=None, openapi_url=None)
    mount_ui(app, agent, settings, path="/", **page_options)
    app.add_middleware(BodyLimit, limit=settings.max_request_bytes)
    app.add_middleware(PerClientLimit, max_requests=settings.max_requests_per_client)
    return app


def serve_ui(agent: "Agent", settings: "ServerSettings", log_level: str = "warning", **page_options: Any) -> None:
    """Serve the page with uvicorn until interrupted. Refuses a non-loopback host without a token."""
    import uvicorn

    from visagent.netlimits import deadline_protocol

    check_exposure(settings)
    app = create_ui_app(agent, settings, **page_options)
    protocol = deadline_protocol(settings.read_timeout_s, settings.max_connections_per_client)
    uvicorn.run(
        app, host=settings.host, port=settings.port, log_level=log_level, access_log=False,
        http=protocol, limit_concurrency=settings.max_connections, timeout_graceful_shutdown=5,
    )  # fmt: skip
