"""Request framing and request targets: raw bytes from a client, and what a recording upstream received."""

from __future__ import annotations

import asyncio
import gzip
import json

import pytest
from yarl import URL

from .conftest import route
from .raw import post, send
from .wat import guest

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
