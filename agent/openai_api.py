"""``POST /v1/chat/completions`` on ``visagent serve``: the agent behind OpenAI's chat API, so any
OpenAI client, SDK or chat front end (Open WebUI, ...) can ask visagent about images.

Request: OpenAI's chat-completions body. User messages carry text and ``image_url`` parts (data
URLs; ``http(s)`` URLs only where ``limits.allow_urls`` is on). The last user message's text is
the question; the images of every user message, in order, are the media (``img_0``, ...), so a
follow-up can refer to an earlier image; earlier user / assistant turns are the history shown to
the planner. ``model`` is accepted and echoed (``GET /v1/models`` lists ``visagent``).

Reply: a ``chat.completion`` whose assistant message is the answer (``no answer (status):
error`` when there is none) and, in the extra field ``visagent``, ``{status, evidence, warnings,
error, trace_id}`` (evidence: ``{id, tool, kind, region?, observation}``). With ``stream: true``:
``chat.completion.chunk`` server-sent events — one ``reasoning_content`` delta per step as it
happens (``[2] tool  detect: ...``), then the answer as ``content``, then a last chunk with
``finish_reason`` and ``visagent``, then ``data: [DONE]``. Errors use OpenAI's shape ``{"error":
{"message", "type", "param", "code"}}`` with the HTTP API's status codes. Same token, roots,
budgets and gate as ``/v1/ask``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import shutil
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import Depends, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

if TYPE_CHECKING:  # pragma: no cover
    from fastapi import FastAPI

    from visagent.types import Answer

MODEL_ID = "visagent"


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    content: str | list[dict[str, Any]] | None = None


class ChatRequest(BaseModel):
    """The fields of OpenAI's body visagent reads (others, e.g. ``temperature``, are accepted and ignored)."""

    model_config = ConfigDict(extra="allow")
    model: str = MODEL_ID
    messages: list[ChatMessage] = Field(min_length=1, max_length=256)
    stream: bool = False


def _openai_error(status: int, message: str) -> Any:
    kind = {401: "authentication_error", 429: "rate_limit_error", 504: "timeout"}.get(status, "invalid_request_error" if status < 500 else "server_error")
    return JSONResponse({"error": {"message": message, "type": kind, "param": None, "code": str(status)}}, status_code=status)


def _parts(message: ChatMessage) -> tuple[str, list[str]]:
    """(text, image URLs) of one message."""
    if isinstance(message.content, str) or message.content is None:
        return message.content or "", []
    texts, images = [], []
    for part in message.content:
        kind = part.get("type")
        if kind == "text":
            texts.append(str(part.get("text", "")))
        elif kind == "image_url":
            ref = part.get("image_url")
            images.append(str(ref.get("url", "") if isinstance(ref, dict) else ref or ""))
    return "\n".join(t for t in texts if t), images


def parse_chat(body: ChatRequest, tmp: Path, allow_urls: bool) -> tuple[str, list[str], list[dict[str, Any]]]:
    """(question, media sources, history) of a chat request; media written into ``tmp``."""
    from visagent.server import Problem

    users = [i for i, m in enumerate(body.messages) if m.role == "user"]
    if not users:
        raise Problem(400, "the conversation has no user message")
    question, _ = _parts(body.messages[users[-1]])
    if not question.strip():
        raise Problem(400, "the last user message has no text: it is the question")
    sources: list[str] = []
    history: list[dict[str, Any]] = []
    pending: str | None = None
    for i, message in enumerate(body.messages):
        text, images = _parts(message)
        if message.role == "user":
            for url in images:
                sources.append(_media(url, tmp, len(sources), allow_urls))
            if i != users[-1]:
                pending = text
        elif message.role == "assistant" and pending is not None:
            history.append({"question": pending, "answer": text})
            pending = None
    if not sources:
        raise Problem(400, "no image in the conversation: send one as an image_url part (a data: URL)")
    return question, sources, history


def _media(url: str, tmp: Path, index: int, allow_urls: bool) -> str:
    from visagent.server import Problem

    if url.startswith(("http://", "https://")):
        if not allow_urls:
            raise Problem(400, "image URLs are off on this server: send the image as a data: URL (limits.allow_urls)")
        return url
    if not url.startswith("data:") or "," not in url:
        raise Problem(400, f"image {index}: not a data: URL")
    header, data = url.split(",", 1)
    try:
        raw = base64.b64decode(data, validate=True) if ";base64" in header else data.encode()
    except (binascii.Error, ValueError):
        raise Problem(400, f"image {index}: the data URL is not valid base64") from None
    if not raw:
        raise Problem(400, f"image {index}: empty")
    path = tmp / f"{index}_image"
    path.write_bytes(raw)
    return str(path)


def _evidence(answer: "Answer", run_id: str) -> dict[str, Any]:
    return {
        "status": answer.status,
        "evidence": [e.model_dump(mode="json") for e in answer.evidence],
        "warnings": list(answer.warnings),
        "error": answer.error,
        "trace_id": run_id,
    }


def _content(answer: "Answer") -> str:
    return answer.answer if answer.ok else f"no answer ({answer.status}): {answer.error}"


def add_routes(app: "FastAPI", srv: Any, auth: Any, errors: dict[int, Any]) -> None:
    """Mount ``POST /v1/chat/completions`` on the server's app (``srv``: its ``_Server``; ``errors``:
    the documented error responses)."""
    from visagent.secrets import scrub
    from visagent.server import _error_for, _timeout_message
    from visagent.types import describe_step

    settings = srv.settings

    def chunk(run_id: str, created: int, model: str, delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
        data = {"id": f"chatcmpl-{run_id}", "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}  # fmt: skip
        return f"data: {scrub(json.dumps(data))}\n\n".encode()

    body_schema = {"requestBody": {"required": True, "content": {"application/json": {"schema": ChatRequest.model_json_schema()}}}}
    responses = {
        200: {"description": "a chat.completion (or, with stream: true, chat.completion.chunk server-sent events)",
              "content": {"application/json": {}, "text/event-stream": {}}},
        **{code: {"description": spec["description"], "content": {"application/json": {"schema": {"type": "object", "properties": {"error": {"type": "object"}}}}}}
           for code, spec in errors.items()},
    }  # fmt: skip

    @app.post(
        "/v1/chat/completions", dependencies=[Depends(auth)], responses=responses, openapi_extra=body_schema,
        summary="OpenAI-compatible chat completions (images in, grounded answer out)",
    )  # fmt: skip
    async def chat_completions(request: Request) -> Any:
        try:
            body = ChatRequest.model_validate_json(await request.body())
        except ValidationError as exc:
            err = exc.errors()[0]
            return _openai_error(400, f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['msg']}")
        tmp = Path(tempfile.mkdtemp(prefix="visagent-http-"))
        try:
            question, sources, history = parse_chat(body, tmp, srv.agent.config.limits.allow_urls)
            srv.check_question(question)
            srv.check_count(len(sources))
            budget = [settings.max_total_pixels]
            for i, source in enumerate(sources):
                if not source.startswith(("http://", "https://")):
                    srv.check_pixels(Path(source), f"image {i}", budget)
            run = await srv.start(question, sources, None, tmp, history=history)
        except Exception as exc:  # noqa: BLE001 - answered in OpenAI's error shape
            shutil.rmtree(tmp, ignore_errors=True)
            problem = _error_for(exc)
            return _openai_error(problem.status, problem.detail)
        loop = asyncio.get_running_loop()
        created = int(time.time())
        run_id = run.run.trace.meta.run_id if run.run is not None else ""
        if not body.stream:
            try:
                answer = await asyncio.wait_for(run.result(), max((run.deadline or 0.0) - loop.time(), 0.001))
            except asyncio.TimeoutError:
                run.stop()
                return _openai_error(504, _timeout_message(settings.timeout_s))
            except Exception as exc:  # noqa: BLE001
                problem = _error_for(exc)
                return _openai_error(problem.status, problem.detail)
            data = {
                "id": f"chatcmpl-{run_id}", "object": "chat.completion", "created": created, "model": body.model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": _content(answer)}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 0, "completion_tokens": sum(s.tokens for s in answer.trace.steps if s.type == "planner"), "total_tokens": 0},
                MODEL_ID: _evidence(answer, run_id),
            }  # fmt: skip
            return JSONResponse(json.loads(scrub(json.dumps(data))))

        async def events() -> AsyncIterator[bytes]:
            steps = run.__aiter__()
            yield chunk(run_id, created, body.model, {"role": "assistant", "content": ""})
            try:
                while True:
                    try:
                        step = await asyncio.wait_for(steps.__anext__(), max((run.deadline or 0.0) - loop.time(), 0.001))
                    except StopAsyncIteration:
                        break
                    except asyncio.TimeoutError:
                        yield chunk(run_id, created, body.model, {"content": _timeout_message(settings.timeout_s)}, "length")
                        yield b"data: [DONE]\n\n"
                        return
                    yield chunk(run_id, created, body.model, {"reasoning_content": describe_step(step) + "\n"})
                answer = run.answer
                assert answer is not None
                yield chunk(run_id, created, body.model, {"content": _content(answer)})
                yield chunk(run_id, created, body.model, {}, "stop", **{MODEL_ID: _evidence(answer, run_id)})
                yield b"data: [DONE]\n\n"
            except Exception as exc:  # noqa: BLE001 - the stream's last event says what went wrong
                yield f"data: {json.dumps({'error': {'message': _error_for(exc).detail, 'type': 'server_error'}})}\n\n".encode()
            finally:
                run.stop()

        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
