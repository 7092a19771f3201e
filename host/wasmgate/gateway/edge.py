"""What never becomes a request: bytes the HTTP parser refuses.

aiohttp answers a malformed request (a bad header name, a line past its
limit, too many headers) with a text 400 that echoes the client's bytes,
and logs a traceback at ERROR. Here it is a JSON 400, or a 431 for a line
too long, that echoes nothing; one WARN line without a traceback; an
access-log entry; and a count in ``wasmgate_requests_total``.
"""

from __future__ import annotations

import json
import logging
from http import HTTPStatus

from aiohttp import web
from aiohttp.http_exceptions import LineTooLong
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from .. import logs
from ..metrics import REQUESTS

log = logging.getLogger("wasmgate.edge")


class EdgeRequestHandler(RequestHandler):
    """aiohttp's connection handler, answering what its parser refuses as the gateway answers errors."""

    def handle_error(
        self, request: BaseRequest, status: int = 500, exc: BaseException | None = None, message: str | None = None
    ) -> web.StreamResponse:
        if status >= 500:  # the gateway's own failure: aiohttp's traceback is what an operator needs
            return super().handle_error(request, status, exc, message)
        if request.writer.output_size > 0:
            raise ConnectionError("the response has started: nothing is left to answer with")
        if isinstance(exc, LineTooLong):
            status = HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE
        reason = type(exc).__name__ if exc is not None else HTTPStatus(status).phrase
        log.warning("malformed request from %s refused with %d: %s", request.remote, status, reason)
        REQUESTS.labels("", str(status)).inc()
        if logs.access_log.isEnabledFor(logging.INFO):
            logs.access({"status": status, "client": request.remote, "error": reason})
        error = {"type": "bad_request", "message": HTTPStatus(status).phrase}
        response = web.Response(status=status, body=json.dumps({"error": error}), content_type="application/json")
        response.force_close()
        return response


class EdgeServer(web.Server):
    def __call__(self) -> RequestHandler:
        return EdgeRequestHandler(self, loop=self._loop, **self._kwargs)


class EdgeRunner(web.AppRunner):
    """An ``AppRunner`` whose connections are handled by ``EdgeRequestHandler``."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        # aiohttp builds its Server in Application._make_handler, which takes no class to build.
        server.__class__ = EdgeServer
        return server
