"""Request framing and request targets: raw bytes from a client, and what a recording upstream received."""

from __future__ import annotations

import asyncio
import gzip
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from yarl import URL

from .conftest import route
from .wat import guest


@dataclass
class Received:
    head: str
    body: bytes

    def header(self, name: str) -> str | None:
        for line in self.head.split("\r\n")[1:]:
            key, _, value = line.partition(":")
            if key.strip().lower() == name:
                return value.strip()
        return None


@dataclass
class RecordingUpstream:
    """An HTTP/1.1 upstream on loopback that records each request it parses, as bytes, and answers 200."""

    received: list[Received] = field(default_factory=list)
    url: str = ""

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
                request = Received(head, b"")
                length = request.header("content-length")
                if length is not None:
                    request.body = await reader.readexactly(int(length))
                elif (request.header("transfer-encoding") or "").lower() == "chunked":
                    while size := int((await reader.readuntil(b"\r\n")).strip(), 16):
                        request.body += await reader.readexactly(size)
                        await reader.readexactly(2)
                    await reader.readuntil(b"\r\n")
                self.received.append(request)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def recording() -> AsyncIterator[RecordingUpstream]:
    upstream = RecordingUpstream()
    server = await asyncio.start_server(upstream.serve, "127.0.0.1", 0)
    upstream.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    yield upstream
    server.close()


async def send(gateway: str, raw: bytes) -> tuple[int, bytes]:
    """Sends ``raw`` as one request on a new connection; the status and body of the answer."""
    url = URL(gateway)
    reader, writer = await asyncio.open_connection(url.host, url.port)
    try:
        writer.write(raw)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        length = next(
            int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")
        )
        return int(head.split()[1]), await asyncio.wait_for(reader.readexactly(length), 10)
    finally:
        writer.close()


def post(path: str, body: bytes, *headers: str) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: gateway", f"Content-Length: {len(body)}", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: upstream\r\nContent-Length: 0\r\n\r\n"


async def test_a_compressed_body_reaches_the_upstream_as_sent_with_its_own_length(start, recording):
    gateway = await start({"routes": [route(upstream=recording.url)]})
    compressed = gzip.compress(b'{"email": "jane@example.com"}' + SMUGGLED)
    status, _ = await send(gateway, post("/v1/chat", compressed, "Content-Encoding: gzip"))
    assert status == 200
    [received] = recording.received  # the bytes inside the body were never read as a request of their own
    assert received.body == compressed
    assert (received.header("content-encoding"), received.header("content-length")) == ("gzip", str(len(compressed)))


@pytest.mark.parametrize("coding", ["gzip", "x-gzip", "deflate", "br"])
async def test_a_compressed_body_to_a_processor_that_reads_bodies_is_a_415(start, recording, coding):
    config = {
        "processors": [{"name": "reader", "module": "reader", "body": "buffer"}],
        "routes": [route(upstream=recording.url, processors=["reader"])],
    }
    gateway = await start(config, {"reader": guest(phases=2)})
    status, body = await send(gateway, post("/v1/chat", gzip.compress(b"{}"), f"Content-Encoding: {coding}"))
    assert status == 415
    assert json.loads(body)["error"]["type"] == "unsupported_content_encoding"
    assert recording.received == []


@pytest.mark.parametrize(
    "target", ["/raw/../v1/chat", "/raw/%2e%2e/v1/chat", "/raw/%2E%2e/v1/chat", "/raw%2f..%2fv1/chat", "/./v1/chat"]
)
async def test_a_target_with_dot_segments_is_a_400_and_reaches_no_upstream(start, recording, target):
    gateway = await start({"routes": [route(upstream=recording.url)]})
    status, body = await send(gateway, post(target, b"{}"))
    assert status == 400
    assert json.loads(body)["error"]["type"] == "bad_request_target"
    assert recording.received == []


async def test_an_absolute_form_target_is_a_400(start, recording):
    gateway = await start({"routes": [route(upstream=recording.url)]})
    status, body = await send(gateway, b"GET http://elsewhere.test/v1/chat HTTP/1.1\r\nHost: gateway\r\n\r\n")
    assert status == 400
    assert json.loads(body)["error"]["type"] == "bad_request_target"
    assert recording.received == []


async def test_an_upstream_error_tells_the_client_no_address_and_the_log_the_details(start, caplog):
    gateway = await start({"routes": [route(upstream="http://127.0.0.1:9")]})
    status, body = await send(gateway, b"GET /v1/chat HTTP/1.1\r\nHost: gateway\r\n\r\n")
    assert status == 502
    assert json.loads(body)["error"] == {"type": "upstream_unavailable", "message": "the upstream could not be reached"}
    assert b"127.0.0.1" not in body
    assert any("127.0.0.1:9" in record.getMessage() for record in caplog.records if record.levelname == "WARNING")


async def test_a_client_that_leaves_frees_the_upstream_connection_it_was_waiting_on(start):
    closed = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # never answers; returns once the gateway closes the connection
        closed.set()
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    upstream = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    gateway = await start({"routes": [route(upstream=upstream, timeout="60s")]})
    url = URL(gateway)
    try:
        _, writer = await asyncio.open_connection(url.host, url.port)
        writer.write(b"GET /v1/chat HTTP/1.1\r\nHost: gateway\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.2)  # the gateway is waiting on the upstream
        writer.close()
        await asyncio.wait_for(closed.wait(), 5)  # not the route's 60 s
    finally:
        server.close()


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"GET / HTTP/1.1\r\nHost: h\r\nBad Name: <script>\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: h\r\nX-Long: <script>" + b"a" * 70_000 + b"\r\n\r\n", 431),
        (b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: <script>\r\n" % i for i in range(200)) + b"\r\n", 400),
    ],
    ids=["bad header name", "header too long", "too many headers"],
)
async def test_a_malformed_request_is_a_json_error_that_echoes_nothing_and_logs_one_line(start, caplog, raw, status):
    gateway = await start({"routes": [route()]})
    answered, body = await send(gateway, raw)
    assert answered == status
    assert json.loads(body)["error"]["type"] == "bad_request"
    assert b"<script>" not in body
    assert not [record for record in caplog.records if record.exc_info]
    assert [record.levelname for record in caplog.records if record.name == "wasmgate.edge"] == ["WARNING"]
