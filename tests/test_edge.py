"""The listener's side of a connection: slow clients, the connection limit, the Server header, and answers
an upstream may not give."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
import pytest
from yarl import URL

from wasmgate.gateway import Gateway

from .conftest import route
from .raw import post, send
from .wat import guest

FAST = {"header_timeout": "300ms", "body_idle_timeout": "300ms", "keepalive_timeout": "300ms"}


@asynccontextmanager
async def connection(gateway: str) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    url = URL(gateway)
    reader, writer = await asyncio.open_connection(url.host, url.port)
    try:
        yield reader, writer
    finally:
        writer.close()


async def answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """The status, headers and body of the next answer on a connection."""
    head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)).decode("latin-1")
    lines = head.split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
    body = await asyncio.wait_for(reader.readexactly(int(headers.get("content-length", "0"))), 10)
    return int(lines[0].split()[1]), headers, body


def edge_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "wasmgate.edge" and r.levelname == "WARNING"]


# -- slow clients ------------------------------------------------------------------------


async def test_a_client_that_dribbles_its_request_head_gets_a_408_and_is_closed(start, recording, caplog):
    gateway = await start({"http": FAST, "routes": [route(upstream=recording.url)]})
    head = b"GET /v1/chat HTTP/1.1\r\nHost: gateway\r\n"
    async with connection(gateway) as (reader, writer):

        async def dribble() -> int:
            """A byte each 50 ms, 2 s in all; how many were sent before the gateway closed the connection."""
            for sent in range(len(head)):
                if writer.is_closing():
                    return sent
                try:
                    writer.write(head[sent : sent + 1])
                    await writer.drain()
                except ConnectionError:
                    return sent
                await asyncio.sleep(0.05)
            return len(head)

        dribbling = asyncio.create_task(dribble())
        status, headers, body = await answer(reader)
        assert await dribbling < len(head)
    assert (status, json.loads(body)["error"]["type"]) == (408, "request_timeout")
    assert headers["connection"] == "close"
    assert recording.received == []
    assert len(edge_warnings(caplog)) == 1


async def test_a_client_that_connects_and_sends_nothing_gets_a_408(start):
    gateway = await start({"http": FAST, "routes": [route()]})
    async with connection(gateway) as (reader, _):
        status, _, _ = await answer(reader)
    assert status == 408


async def test_an_idle_kept_alive_connection_is_closed_without_an_answer(start):
    gateway = await start({"http": FAST, "routes": [route()]})
    async with connection(gateway) as (reader, writer):
        writer.write(b"GET /v1/chat HTTP/1.1\r\nHost: gateway\r\n\r\n")
        assert (await answer(reader))[0] == 200
        assert await asyncio.wait_for(reader.read(), 5) == b""


async def test_a_request_served_after_an_idle_gap_shorter_than_the_timeouts_is_served(start):
    gateway = await start({"http": {**FAST, "header_timeout": "2s", "keepalive_timeout": "2s"}, "routes": [route()]})
    async with connection(gateway) as (reader, writer):
        for _ in range(2):
            await asyncio.sleep(0.5)
            writer.write(b"GET /v1/chat HTTP/1.1\r\nHost: gateway\r\n\r\n")
            assert (await answer(reader))[0] == 200


async def test_a_body_that_stops_arriving_gets_a_408_and_nothing_whole_reaches_the_upstream(start, recording):
    gateway = await start({"http": FAST, "routes": [route(upstream=recording.url)]})
    async with connection(gateway) as (reader, writer):
        writer.write(post("/v1/chat", b"x" * 10).replace(b"Content-Length: 10", b"Content-Length: 100"))
        status, _, body = await answer(reader)
    assert (status, json.loads(body)["error"]["type"]) == (408, "request_timeout")
    assert recording.received == []


async def test_a_streamed_body_that_stops_arriving_gets_a_408_and_the_upstream_request_is_cut(start, recording):
    gateway = await start({"http": FAST, "routes": [route(upstream=recording.url)]})
    async with connection(gateway) as (reader, writer):
        head = post("/v1/chat", b"").replace(b"Content-Length: 0", b"Content-Length: 1000000")
        writer.write(head + b"x" * 200_000)  # past what is read whole: it streams upstream
        status, _, _ = await answer(reader)
    assert status == 408
    assert recording.received == []  # the upstream never parsed a whole request


async def test_expect_100_continue_without_the_body_that_follows_gets_a_408(start, recording):
    gateway = await start({"http": FAST, "routes": [route(upstream=recording.url)]})
    async with connection(gateway) as (reader, writer):
        writer.write(post("/v1/chat", b"", "Expect: 100-continue").replace(b"Length: 0", b"Length: 10"))
        statuses = [(await answer(reader))[0]]
        if statuses[0] == 100:
            statuses.append((await answer(reader))[0])
    assert statuses[-1] == 408
    assert recording.received == []


# -- connections ------------------------------------------------------------------------


async def test_a_connection_over_the_limit_is_answered_503_and_a_freed_slot_serves_again(start):
    gateway = await start({"http": {"max_connections": 2}, "routes": [route()]})
    async with connection(gateway), connection(gateway) as (_, held):
        async with connection(gateway) as (reader, _):
            status, _, body = await answer(reader)
            assert (status, json.loads(body)["error"]["type"]) == (503, "overloaded")
            assert await asyncio.wait_for(reader.read(), 5) == b""
        held.close()
        await asyncio.sleep(0.1)
        status, _ = await send(gateway, b"GET /v1/chat HTTP/1.1\r\nHost: gateway\r\n\r\n")
    assert status == 200


# -- the Server header ------------------------------------------------------------------


@pytest.mark.parametrize(("configured", "sent"), [({}, "wasmgate"), ({"server_header": "edge/1"}, "edge/1")])
async def test_a_response_without_a_server_header_gets_the_gateways(start, recording, configured, sent):
    gateway = await start({"http": configured, "routes": [route(upstream=recording.url)]})
    async with aiohttp.ClientSession() as client:
        async with client.get(f"{gateway}/v1/chat") as proxied:
            assert proxied.headers["Server"] == sent
        async with client.get(f"{gateway}/v1/chat/../x") as refused:  # the gateway's own answer
            assert refused.headers["Server"] == sent


async def test_a_null_server_header_sends_none_even_when_a_processor_removed_the_upstreams(start):
    strip = "i32.const 1 {s:server} call $remove-header i32.const 0"
    remove = guest(response_headers=strip, strings={"server": "server"})
    config = {
        "http": {"server_header": None},
        "processors": [{"name": "strip", "module": "strip"}],
        "routes": [route(processors=["strip"])],
    }
    gateway = await start(config, {"strip": remove})
    async with aiohttp.ClientSession() as client, client.get(f"{gateway}/v1/chat") as response:
        assert response.status == 200
        assert "Server" not in response.headers


async def test_the_upstreams_server_header_passes_as_it_was_sent(start):
    gateway = await start({"routes": [route()]})
    async with aiohttp.ClientSession() as client, client.get(f"{gateway}/v1/chat") as response:
        assert response.headers["Server"].startswith("Python/")  # the echo upstream is aiohttp


# -- answers an upstream may not give ---------------------------------------------------


async def test_an_unsolicited_101_from_the_upstream_is_a_502(start, caplog):
    async def switching(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: evil\r\nConnection: upgrade\r\n\r\nraw bytes")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(switching, "127.0.0.1", 0)
    try:
        gateway = await start({"routes": [route(upstream=f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}")]})
        with caplog.at_level(logging.WARNING):
            status, body = await send(gateway, b"GET /v1/chat HTTP/1.1\r\nHost: gateway\r\n\r\n")
    finally:
        server.close()
    assert (status, json.loads(body)["error"]["type"]) == (502, "upstream_protocol_error")
    assert b"raw bytes" not in body


async def test_the_rest_of_a_body_after_an_early_answer_is_not_taken_for_a_slow_head(start, caplog):
    gateway = await start({"http": FAST, "routes": [route(match={"path_prefix": "/v1/"})]})
    async with connection(gateway) as (reader, writer):
        writer.write(post("/elsewhere", b"12345").replace(b"Content-Length: 5", b"Content-Length: 10"))
        assert (await answer(reader))[0] == 404  # answered before the body was read
        writer.write(b"67890")
        assert await asyncio.wait_for(reader.read(), 5) == b""  # the idle connection closes, unanswered
    assert edge_warnings(caplog) == []


async def test_the_gateways_own_failure_is_a_json_500_with_its_server_header(start, monkeypatch, caplog):
    gateway = await start({"routes": [route()]})

    async def broken(self, request):  # a bug in the gateway
        raise RuntimeError("a bug")

    monkeypatch.setattr(Gateway, "_serve", broken)
    async with aiohttp.ClientSession() as client, client.get(f"{gateway}/v1/chat") as response:
        assert response.status == 500
        assert response.headers["Server"] == "wasmgate"
        assert (await response.json())["error"]["type"] == "gateway_error"
    assert any(record.exc_info for record in caplog.records)  # the traceback is the operator's
