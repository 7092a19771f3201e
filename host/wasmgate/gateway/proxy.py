"""The proxy: a request in, its route's processors, the upstream, the
processors again, the response out.

HTTP is handled here (hop-by-hop headers per RFC 9110, framing,
``X-Request-Id``, upstream errors as 502/504); processors are the chain's
business (``chain.ChainRun``), so this module stays a thin adapter.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network, ip_address
from typing import Any

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from .. import logs
from ..config import HttpConfig, UpstreamConfig
from ..metrics import REQUESTS
from ..metrics import flush as flush_metrics
from ..runtime import Runtime, Scheduler
from .chain import BodySource, ChainRun, StreamAborted
from .edge import Response, StreamResponse
from .exchange import MANAGED_HEADERS, Exchange, LocalResponse, RequestFacts, error_body, new_exchange
from .routing import Route, match, target_problem, upstream_url
from .subrequests import DEPTH_HEADER, CallClient

log = logging.getLogger("wasmgate.proxy")

SMALL_BODY = 64 * 1024
"""Bodies known to be at most this are read whole: each body hook then runs once per direction."""


METRICS_INTERVAL = 1.0
"""Seconds between flushes of the metrics a busy worker tallies (an idle one flushes after each request)."""


def new_request_id() -> str:
    """128 random bits in hex, like a UUID4's, without the system call per request that ``uuid4`` makes."""
    return f"{random.getrandbits(128):032x}"


class Gateway:
    def __init__(
        self,
        routes: Sequence[Route],
        runtime: Runtime,
        upstream: UpstreamConfig,
        http: HttpConfig,
        max_depth: int,
        trusted_proxies: Sequence[IPv4Network | IPv6Network] = (),
    ) -> None:
        self.routes = routes
        self.trusted_proxies = trusted_proxies
        self.runtime = runtime
        self.calls = CallClient()
        self._upstream = upstream
        self._http = http
        self.max_depth = max_depth
        self._session: aiohttp.ClientSession | None = None
        self._in_flight = 0
        self._flusher: asyncio.Task[None] | None = None
        self._scheduler: Scheduler | None = None  # the serving loop's, from start

    async def start(self) -> None:
        self._scheduler = self.runtime.scheduler()
        connector = aiohttp.TCPConnector(limit=self._upstream.max_connections, enable_cleanup_closed=True)
        self._session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,  # bytes pass as the upstream sent them
            skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type"),
            cookie_jar=aiohttp.DummyCookieJar(),
        )

        self._flusher = asyncio.create_task(self._flush_metrics(), name="wasmgate-metrics")

    async def close(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
        flush_metrics()
        await self.calls.close()
        if self._session is not None:
            await self._session.close()

    async def _flush_metrics(self) -> None:
        """Brings the metrics up to date every second, however busy (idle, each request does)."""
        while True:
            await asyncio.sleep(METRICS_INTERVAL)
            flush_metrics()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self._in_flight += 1
        try:
            return await self._serve(request)
        finally:
            self._in_flight -= 1
            if not self._in_flight:
                flush_metrics()

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        request_id = _request_id(request.headers)
        route = None
        depth = _depth(request.headers)
        if (problem := target_problem(request.raw_path)) is not None:
            refusal: tuple[int, str, str] | None = (400, "bad_request_target", problem)
        elif (route := match(self.routes, request.method, request.path, request.headers)) is None:
            refusal = (404, "no_route", f"no route matches {request.method} {request.path}")
        else:
            refusal = self._refusal(request, route, depth)
        if refusal is not None:
            return self._refuse(request, request_id, route, refusal, started)
        assert route is not None and depth is not None, "refused otherwise"
        client = request.remote or ""
        facts = RequestFacts(
            request.method, request.path, request.query_string, request_id, route.name, route.tenant, client
        )
        headers = _forwardable(request, request_id, client, _trusted(client, self.trusted_proxies))
        exchange = new_exchange(facts, headers, route.upstream, len(route.chain.processors))
        assert self._scheduler is not None, "the gateway serves once started"
        run = ChainRun(route.chain, facts, exchange, self.runtime, self._scheduler, self.calls, depth)
        delivery = Delivery()
        response: web.StreamResponse | None = None
        try:
            response = await self._proxy(request, route, run, delivery)
            return response
        finally:
            await run.finish()
            status = response.status if response is not None else 499  # the client went away
            route.metrics.served(status)
            elapsed = time.perf_counter() - started
            route.metrics.seconds.observe(elapsed)
            if logs.access_log.isEnabledFor(logging.INFO):
                logs.access(_access(request, route, status, started, delivery, run))

    def _refusal(self, request: web.Request, route: Route, depth: int | None) -> tuple[int, str, str] | None:
        """Why ``route`` takes no part in ``request``, if it may not: status, kind and message."""
        if depth is None:
            return 400, "bad_depth", f"{DEPTH_HEADER} must be a number of ASCII digits"
        if depth > self.max_depth:
            return 508, "loop_detected", f"{DEPTH_HEADER} is over {self.max_depth}: a request loops"
        if route.chain.hooks_request_body and _coded(request.headers):
            # The gateway decodes no body: its processors would read the coded bytes, not the content.
            refused = "this route's processors read bodies as sent, so its requests take no Content-Encoding"
            return 415, "unsupported_content_encoding", refused
        return None

    def _refuse(
        self,
        request: web.Request,
        request_id: str,
        route: Route | None,
        refusal: tuple[int, str, str],
        started: float,
    ) -> web.Response:
        """Answers a request no processor sees, counted and logged as any other."""
        status, kind, message = refusal
        if route is not None:
            route.metrics.served(status)
        else:
            REQUESTS.labels("", str(status)).inc()
        response = self._error(status, kind, message)
        response.headers["X-Request-Id"] = request_id
        if logs.access_log.isEnabledFor(logging.INFO):
            logs.access({**_access_line(request, request_id, route, status, started), "error": kind})
        return response

    async def _proxy(self, request: web.Request, route: Route, run: ChainRun, delivery: Delivery) -> web.StreamResponse:
        exchange = run.exchange
        try:
            forwarded = await run.process_request(await self._request_body(request))
        except ClientStalled as stalled:
            return await self._answer(request, run, delivery, await run.respond_locally(_stalled(run, stalled)))
        if isinstance(forwarded, LocalResponse):
            return await self._answer(request, run, delivery, await run.respond_locally(forwarded))

        headers = _upstream_headers(exchange, request, untouched=not route.chain.hooks_request_body)
        headers[DEPTH_HEADER] = str(run.depth + 1)  # an upstream that is this gateway again ends the loop
        upstream_base = exchange.upstream
        if route.chain.hooks_response_body:
            headers["Accept-Encoding"] = "identity"  # processors read bodies as sent, not compressed
        assert self._session is not None, "the gateway serves once started"
        delivery.upstream = upstream_base
        sent = time.perf_counter()
        try:
            upstream = await self._session.request(
                request.method,
                upstream_url(upstream_base, request.raw_path),
                headers=headers,
                data=forwarded if forwarded else None,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=route.timeout, connect=self._upstream.connect_timeout),
            )
        except (aiohttp.ClientError, TimeoutError) as failure:
            # A processor that answers while the request body streams stops the body (``run.interrupt``
            # is its answer), and so does a client that stalls; aiohttp reports either as a connection
            # error of its own, caused by what the body raised.
            cause = failure.__cause__
            if isinstance(cause, ClientStalled):
                local = _stalled(run, cause)
            else:
                local = run.interrupt or _upstream_error(run, upstream_base, failure)
            return await self._answer(request, run, delivery, await run.respond_locally(local))
        route.metrics.upstream_seconds.observe(time.perf_counter() - sent)

        async with upstream:
            if upstream.status < 200:  # no upgrade is asked for (Upgrade is hop-by-hop), nor any 1xx passed on
                log.warning("request %s: upstream %s answered %d", run.facts.request_id, upstream_base, upstream.status)
                local = _gateway_error(
                    502, "upstream_protocol_error", "the upstream answered with an unexpected status"
                )
                return await self._answer(request, run, delivery, await run.respond_locally(local))
            try:
                final = await run.process_response(
                    upstream.status, _response_headers(upstream.headers), await _response_body(request, upstream)
                )
            except aiohttp.ClientError as failure:  # the body broke off while read whole, before any hook saw it
                error = _upstream_error(run, upstream_base, failure)
                return await self._answer(request, run, delivery, await run.respond_locally(error))
            untouched_length = None if route.chain.hooks_response_body else upstream.content_length
            return await self._answer(request, run, delivery, final, untouched_length)

    async def _request_body(self, request: web.Request) -> bytes | BodySource:
        if not request.body_exists:
            return b""
        idle = self._http.body_idle_timeout
        if request.content_length is not None and request.content_length <= SMALL_BODY:
            try:  # a small body is bounded as a whole, by the idle timeout: 64 KiB in 30 s is 2 KiB/s
                async with asyncio.timeout(idle):
                    return await request.read()
            except TimeoutError:
                raise ClientStalled(f"the request body did not come in {idle:g}s") from None
        return _chunks(request.content, idle)

    async def _answer(
        self,
        request: web.Request,
        run: ChainRun,
        delivery: Delivery,
        body: bytes | AsyncIterator[bytes],
        length: int | None = None,
    ) -> web.StreamResponse:
        exchange = run.exchange
        headers = CIMultiDict(exchange.response_headers() or ())
        headers["X-Request-Id"] = run.facts.request_id
        if self._http.server_header and "Server" not in headers:
            headers["Server"] = self._http.server_header
        if isinstance(body, bytes):
            delivery.first_byte = time.perf_counter()  # sent as it returns
            delivery.bytes_out = 0 if request.method == "HEAD" else len(body)
            return Response(status=exchange.response_status, headers=headers, body=body)
        response = StreamResponse(status=exchange.response_status, headers=headers)
        if length is not None:
            response.content_length = length
        await response.prepare(request)
        delivery.first_byte = time.perf_counter()
        try:
            async for chunk in body:
                await response.write(chunk)
                delivery.bytes_out += len(chunk)
        except (StreamAborted, aiohttp.ClientError, TimeoutError) as failure:
            # The status line is gone: all that is left is to cut the connection.
            log.warning("request %s: response cut mid-stream: %s", run.facts.request_id, failure)
            delivery.cut = True
            if request.transport is not None:
                request.transport.close()
            return response
        await response.write_eof()
        return response

    def _error(self, status: int, kind: str, message: str) -> web.Response:
        headers = {"Content-Type": "application/json"}
        if self._http.server_header:
            headers["Server"] = self._http.server_header
        return Response(status=status, headers=headers, body=error_body({"type": kind, "message": message}))


def _coded(headers: CIMultiDictProxy[str]) -> bool:
    return headers.get("Content-Encoding", "identity").strip().lower() != "identity"


def _request_id(headers: CIMultiDictProxy[str]) -> str:
    """The client's ``X-Request-Id`` when it is a short run of visible ASCII, else a new one: it goes into
    logs and upstream headers as is."""
    value = headers.get("x-request-id", "")
    return value if _REQUEST_ID.fullmatch(value) else new_request_id()


_REQUEST_ID = re.compile(r"[!-~]{1,128}")


def _depth(headers: CIMultiDictProxy[str]) -> int | None:
    """How many sub-requests deep this request is (0 from a client); None when the header is garbage."""
    value = headers.get(DEPTH_HEADER, "0")
    return int(value) if value.isascii() and value.isdigit() and len(value) < 4 else None


# -- bodies ------------------------------------------------------------------------


async def _response_body(request: web.Request, upstream: aiohttp.ClientResponse) -> bytes | BodySource:
    if request.method == "HEAD" or upstream.status in (204, 304):
        return b""
    streamed = upstream.content_type == "text/event-stream"
    if not streamed and upstream.content_length is not None and upstream.content_length <= SMALL_BODY:
        return await upstream.read()
    return _chunks(upstream.content)


class ClientStalled(Exception):
    """The client sent no byte of its request body for ``http.body_idle_timeout``."""


async def _chunks(reader: aiohttp.StreamReader, idle: float | None = None) -> BodySource:
    """A body as it arrives, without waiting to fill any buffer (SSE events pass one by one); with ``idle``,
    ``ClientStalled`` when the next bytes take longer than that."""
    while True:
        try:
            async with asyncio.timeout(idle):
                chunk = await reader.readany()
        except TimeoutError:
            raise ClientStalled(f"no byte of the request body came in {idle:g}s") from None
        ended = reader.at_eof()
        if chunk or ended:
            yield chunk, ended
        if ended:
            return


# -- headers -----------------------------------------------------------------------


def _connection_scoped(headers: CIMultiDictProxy[str], always: frozenset[str] = MANAGED_HEADERS) -> frozenset[str]:
    """``always`` (hop-by-hop names by default), and those the message lists in its Connection header."""
    listed = {name.strip().lower() for value in headers.getall("connection", ()) for name in value.split(",")}
    return always | listed if listed else always


FORWARDING_HEADERS = frozenset({"x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "forwarded", "x-real-ip"})
"""What a client says about where a request came from: believed only from a trusted proxy."""
_UNTRUSTED = MANAGED_HEADERS | FORWARDING_HEADERS


def _trusted(client: str, proxies: Sequence[IPv4Network | IPv6Network]) -> bool:
    if not proxies:
        return False
    try:
        address = ip_address(client)
    except ValueError:  # a Unix socket's peer, say
        return False
    return any(address in network for network in proxies)


def _forwardable(request: web.Request, request_id: str, client: str, trusted: bool) -> CIMultiDict[str]:
    """The request headers processors see and the upstream gets."""
    drop = _connection_scoped(request.headers, MANAGED_HEADERS if trusted else _UNTRUSTED)
    headers = CIMultiDict((k, v) for k, v in request.headers.items() if k.lower() not in drop)
    headers["X-Request-Id"] = request_id
    prior = headers.get("X-Forwarded-For")
    headers["X-Forwarded-For"] = f"{prior}, {client}" if prior else client
    headers.setdefault("X-Forwarded-Proto", request.scheme)
    if request.host:
        headers.setdefault("X-Forwarded-Host", request.host)
    return headers


def _upstream_headers(exchange: Exchange, request: web.Request, untouched: bool) -> CIMultiDict[str]:
    headers = CIMultiDict(exchange.request_headers())
    headers.popall("Host", None)  # the upstream's own host, set from its URL
    if untouched and request.content_length is not None:
        headers["Content-Length"] = str(request.content_length)  # keep the client's framing when unchanged
    return headers


def _response_headers(headers: CIMultiDictProxy[str]) -> CIMultiDict[str]:
    drop = _connection_scoped(headers)
    return CIMultiDict((k, v) for k, v in headers.items() if k.lower() not in drop)


# -- answering the client ------------------------------------------------------


def _stalled(run: ChainRun, stalled: ClientStalled) -> LocalResponse:
    log.warning("request %s: client %s: %s; answered 408", run.facts.request_id, run.facts.client_address, stalled)
    return _gateway_error(408, "request_timeout", "the request body stopped arriving")


def _upstream_error(run: ChainRun, upstream: str, failure: aiohttp.ClientError | TimeoutError) -> LocalResponse:
    """The client's answer names no address and no exception: those are for the operator's log."""
    log.warning("request %s: upstream %s failed: %s", run.facts.request_id, upstream, repr(failure))
    if isinstance(failure, TimeoutError):
        return _gateway_error(504, "upstream_timeout", "the upstream did not answer in time")
    return _gateway_error(502, "upstream_unavailable", "the upstream could not be reached")


def _gateway_error(status: int, kind: str, message: str) -> LocalResponse:
    return LocalResponse.json_error(status, {"type": kind, "message": message})


@dataclass(slots=True)
class Delivery:
    """Where a request went and what its answer put on the wire, for the access log."""

    upstream: str | None = None
    """The upstream the request was sent to, as processors left it; None when none was reached."""
    first_byte: float | None = None
    """When the answer's head was sent (``perf_counter``)."""
    bytes_out: int = 0
    """Body bytes sent to the client."""
    cut: bool = False
    """The answer broke off after its head: the client got less than the whole body."""


def _access_line(
    request: web.Request, request_id: str, route: Route | None, status: int, started: float
) -> dict[str, Any]:
    """What the access log says of every request."""
    return {
        "request_id": request_id,
        "route": route.name if route is not None else None,
        "tenant": route.tenant if route is not None else None,
        "method": request.method,
        "path": request.path,
        "status": status,
        "client": request.remote,
        "ms": round((time.perf_counter() - started) * 1000, 3),
    }


def _access(
    request: web.Request, route: Route, status: int, started: float, delivery: Delivery, run: ChainRun
) -> dict[str, Any]:
    """The access line of a request that reached its route's processors."""
    line = _access_line(request, run.facts.request_id, route, status, started)
    line["upstream"] = delivery.upstream
    line["bytes_in"] = request.content.total_bytes
    line["bytes_out"] = delivery.bytes_out
    line["ttfb_ms"] = None if delivery.first_byte is None else round((delivery.first_byte - started) * 1000, 3)
    line["processors"] = {
        name: {"outcome": o.result, "ms": round(o.seconds * 1000, 3)} for name, o in run.outcomes.items()
    }
    if delivery.cut:
        line["cut"] = True
    return line


def app(gateway: Gateway) -> web.Application:
    application = web.Application()
    application.router.add_route("*", "/{tail:.*}", gateway.handle)
    application.on_startup.append(lambda _: gateway.start())
    application.on_cleanup.append(lambda _: gateway.close())
    return application
