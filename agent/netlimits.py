"""Connection limits for ``visagent serve``: slow clients are cut off, no client holds everything.

- ``deadline_protocol(read_timeout_s, max_per_client)``: a uvicorn h11 protocol class that gives
  each request ``read_timeout_s`` seconds, in all, for its headers and body to arrive (however
  slowly the bytes trickle in; an idle timeout alone would not stop a trickle) and closes the
  connection when they have not; a client with ``max_per_client`` connections open gets no more
  (the new one is closed at once). The total number of connections is capped by uvicorn's
  ``limit_concurrency`` (503 beyond).
- ``PerClientLimit``: ASGI middleware answering 429 when one client already has
  ``max_requests`` requests in progress.

Clients are told apart by their address (``scope["client"]``), as a reverse proxy would be one
client: put the proxy's own limits in front when there is one.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from typing import Any, Callable

log = logging.getLogger(__name__)


def deadline_protocol(read_timeout_s: float, max_per_client: int) -> type:
    """The uvicorn protocol class (see the module docstring)."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    open_per_client: Counter[str] = Counter()

    class DeadlineH11Protocol(H11Protocol):  # type: ignore[misc]
        _deadline: Any = None
        _host: str | None = None

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._host = self.client[0] if self.client else None
            if self._host is not None:
                open_per_client[self._host] += 1
                if open_per_client[self._host] > max_per_client:
                    log.info("closing a connection from %s: %d already open", self._host, max_per_client)
                    transport.close()
                    return
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            if self._host is not None:
                open_per_client[self._host] -= 1
                if open_per_client[self._host] <= 0:
                    del open_per_client[self._host]
                self._host = None
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.cycle is not None and not self.cycle.more_body:
                self._disarm()  # the whole request has arrived in time

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm()  # the next request on this connection gets its own deadline

        def _arm(self) -> None:
            self._disarm()
            self._deadline = self.loop.call_later(read_timeout_s, self._too_slow)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _too_slow(self) -> None:
            self._deadline = None
            if self.transport.is_closing():
                return
            receiving = self.cycle is None or self.cycle.more_body
            if not receiving:
                return
            log.info("closing a connection from %s: the request did not arrive within %g s", self._host, read_timeout_s)
            if self.cycle is None:  # the headers never completed: say why before closing
                body = json.dumps({"detail": f"request not received within {read_timeout_s:g} s"}).encode()
                head = f"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\nconnection: close\r\n\r\n"
                self.transport.write(head.encode() + body)
            else:
                self.cycle.disconnected = True
                self.cycle.message_event.set()
            self.transport.close()

    return DeadlineH11Protocol


class PerClientLimit:
    """ASGI middleware: 429 for a client (by address) with ``max_requests`` requests in progress."""

    def __init__(self, app: Any, max_requests: int) -> None:
        self.app = app
        self.max_requests = max_requests
        self.active: Counter[str] = Counter()

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] != "http" or not scope.get("client"):
            await self.app(scope, receive, send)
            return
        host = scope["client"][0]
        if self.active[host] >= self.max_requests:
            body = json.dumps({"detail": f"too many requests in progress from {host} (server.max_requests_per_client is {self.max_requests})"}).encode()
            headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), (b"retry-after", b"1")]
            await send({"type": "http.response.start", "status": 429, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        self.active[host] += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.active[host] -= 1
            if self.active[host] <= 0:
                del self.active[host]
