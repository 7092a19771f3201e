"""The listener's side of a connection, before and around requests.

- **Malformed requests.** aiohttp answers what its parser refuses (a bad
  header name, a line past its limit, too many headers) with a text 400
  that echoes the client's bytes, and logs a traceback at ERROR. Here it
  is a JSON 400, or a 431 for a line too long, that echoes nothing; one
  WARN line without a traceback; an access-log entry; and a count in
  ``wasmgate_requests_total``.
- **Slow clients.** A request head must arrive whole within
  ``http.header_timeout`` of the connection's start or of its first byte:
  else a 408 and a close, logged the same way. An idle connection closes
  after ``http.keepalive_timeout`` (aiohttp's own timer); a stalled body
  is the proxy's to bound (``http.body_idle_timeout``).
- **Connections.** A worker holds at most ``http.max_connections``; one
  more is answered 503 and closed at once, so a flood of idle clients
  cannot take every descriptor the process has.
- **The Server header** is the gateway's config's, or none: aiohttp's own
  is never added (``Response``, ``StreamResponse``).

aiohttp has no hooks for these, so ``EdgeRequestHandler`` reads and
extends its handler's internals; pyproject.toml pins aiohttp to the minor
version these tests ran on.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time
from http import HTTPStatus
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import LineTooLong
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from .. import logs
from ..config import HttpConfig
from ..metrics import CONNECTIONS_REFUSED, REQUESTS
from .exchange import error_body

log = logging.getLogger("wasmgate.edge")


class _NoDefaultServerHeader:
    """aiohttp adds ``Server: Python/... aiohttp/...`` to a response without one; these responses add none.
    The gateway sets its own (``http.server_header``) where it makes a response."""

    _headers: Any

    async def _prepare_headers(self) -> None:
        given = "Server" in self._headers
        await super()._prepare_headers()  # type: ignore[misc]
        if not given:
            self._headers.popall("Server", None)


class Response(_NoDefaultServerHeader, web.Response):
    pass


class StreamResponse(_NoDefaultServerHeader, web.StreamResponse):
    pass


def connection_limit(http: HttpConfig) -> int:
    """``http.max_connections``, or half the soft limit on open files (1024 when there is none)."""
    if http.max_connections is not None:
        return http.max_connections
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return max(1, (soft if soft != resource.RLIM_INFINITY else 2048) // 2)


def _refused(status: int, kind: str, message: str, server: str | None) -> bytes:
    """A whole answer, written to a connection that has no request to answer, then closed."""
    body = error_body({"type": kind, "message": message})
    head = [
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        "Connection: close",
        *([f"Server: {server}"] if server else []),
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


class EdgeRequestHandler(RequestHandler):
    """aiohttp's connection handler, with the gateway's timeouts, limit and answers (see the module)."""

    def __init__(self, manager: EdgeServer, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._edge = manager
        self._head_timer: asyncio.TimerHandle | None = None
        self._counted = False
        self._body: StreamReader | None = None  # the last request's, which aiohttp may read on after answering

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        edge = self._edge
        if edge.open >= edge.limit:
            CONNECTIONS_REFUSED.inc()
            if edge.warned_at < time.monotonic() - 10:  # a flood is one line every ten seconds, not one each
                edge.warned_at = time.monotonic()
                log.warning("refused connections with 503: this worker holds %d (http.max_connections)", edge.open)
            refusal = _refused(503, "overloaded", "the gateway holds too many connections", edge.http.server_header)
            self._close_with(refusal)
            return
        edge.open += 1
        self._counted = True
        self._start_head_timer()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._counted:
            self._edge.open -= 1
            self._counted = False
        self._stop_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        # The first bytes of a new request (aiohttp calls this with none when it resumes reading).
        if data and self._head_timer is None and self._awaiting_head():
            self._start_head_timer()
        super().data_received(data)
        if not self._awaiting_head():
            self._stop_head_timer()

    async def _handle_request(self, request: BaseRequest, start_time: float | None, handler: Any) -> Any:
        # Body bytes that came before the request's task ran looked like the start of a head.
        self._stop_head_timer()
        self._body = request.content
        return await super()._handle_request(request, start_time, handler)

    def _process_keepalive(self) -> None:
        if self._head_timer is None:  # a head under way is the head timer's to end, with a 408
            super()._process_keepalive()

    def _awaiting_head(self) -> bool:
        """No request is parsed or in progress, the last one's body is all read (an early answer leaves aiohttp
        reading the rest), and the connection is still HTTP: the next bytes are a head."""
        if self._messages or self._request_in_progress or self._payload_parser or self._upgraded:
            return False
        return self._body is None or self._body.is_eof()

    def _start_head_timer(self) -> None:
        self._head_timer = self._loop.call_later(self._edge.http.header_timeout, self._head_timed_out)

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if not self._awaiting_head() or self.transport is None:
            return
        client = _address(self.transport.get_extra_info("peername"))
        timeout = self._edge.http.header_timeout
        log.warning("client %s sent no whole request head in %gs; answered 408 and closed", client, timeout)
        _count(408, client, "header_timeout")
        message = "the request head did not arrive in time"
        self._close_with(_refused(408, "request_timeout", message, self._edge.http.server_header))

    def _close_with(self, answer: bytes) -> None:
        assert self.transport is not None, "called on a connection"
        self.transport.write(answer)
        self.force_close()  # closes the transport once what is written is sent

    def handle_error(
        self, request: BaseRequest, status: int = 500, exc: BaseException | None = None, message: str | None = None
    ) -> web.StreamResponse:
        if status >= 500:  # the gateway's own failure: aiohttp logs the traceback an operator needs
            super().handle_error(request, status, exc, message)
            return self._answer(status, "gateway_error")
        if request.writer.output_size > 0:
            raise ConnectionError("the response has started: nothing is left to answer with")
        if isinstance(exc, LineTooLong):
            status = HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE
        reason = type(exc).__name__ if exc is not None else HTTPStatus(status).phrase
        log.warning("malformed request from %s refused with %d: %s", request.remote, status, reason)
        _count(status, request.remote, reason)
        return self._answer(status, "bad_request")

    def _answer(self, status: int, kind: str) -> Response:
        """The gateway's JSON answer for what was no request of its own, closing the connection."""
        response = Response(status=status, body=error_body({"type": kind, "message": HTTPStatus(status).phrase}))
        response.content_type = "application/json"
        if self._edge.http.server_header:
            response.headers["Server"] = self._edge.http.server_header
        response.force_close()
        return response


def _address(peer: Any) -> str | None:
    return peer[0] if isinstance(peer, tuple) else None


def _count(status: int, client: str | None, error: str) -> None:
    """What never became a request, in the metrics and the access log."""
    REQUESTS.labels("", str(status)).inc()
    if logs.access_log.isEnabledFor(logging.INFO):
        logs.access({"status": status, "client": client, "error": error})


class EdgeServer(web.Server):
    """aiohttp's ``Server``, making ``EdgeRequestHandler``s and counting their connections."""

    http: HttpConfig
    limit: int
    open: int
    warned_at: float

    def __call__(self) -> RequestHandler:
        return EdgeRequestHandler(self, loop=self._loop, **self._kwargs)


class EdgeRunner(web.AppRunner):
    """An ``AppRunner`` whose connections are handled by ``EdgeRequestHandler``, by ``http``."""

    def __init__(self, application: web.Application, http: HttpConfig, **kwargs: Any) -> None:
        super().__init__(
            application, keepalive_timeout=http.keepalive_timeout, shutdown_timeout=http.drain_timeout, **kwargs
        )
        self._http = http

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        # aiohttp builds its Server in Application._make_handler, which takes no class to build.
        server.__class__ = EdgeServer
        assert isinstance(server, EdgeServer)
        server.http, server.limit, server.open = self._http, connection_limit(self._http), 0
        server.warned_at = float("-inf")
        return server
