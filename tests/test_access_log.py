"""The access log: one JSON object a request, whatever became of it."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import aiohttp
import pytest
from yarl import URL

from .conftest import route
from .wat import guest


@pytest.fixture(autouse=True)
def _access_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="wasmgate.access")


def logged(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    """The access lines logged so far, as objects, in order."""
    return [json.loads(r.getMessage()) for r in caplog.records if r.name == "wasmgate.access"]


async def test_a_proxied_request_logs_its_upstream_bytes_and_time_to_first_byte(start, caplog):
    gateway = await start({"routes": [route()]})
    async with aiohttp.ClientSession() as client, client.post(f"{gateway}/v1/chat", data=b"x" * 1000) as response:
        received = await response.read()
    [line] = logged(caplog)
    assert line["upstream"] == start.upstreams["${UP}"]
    assert (line["bytes_in"], line["bytes_out"]) == (1000, len(received))
    assert 0 < line["ttfb_ms"] <= line["ms"]
    assert (line["route"], line["method"], line["path"], line["status"]) == ("main", "POST", "/v1/chat", 200)


async def test_the_upstream_logged_is_the_one_a_processor_chose(start, caplog):
    choose = guest(
        phases=1,
        request_headers="{s:url} i32.const 64 call $set-upstream i32.const 0",
        strings={"url": start.upstreams["${UP2}"]},
    )
    config = {
        "processors": [{"name": "pick", "module": "pick", "upstreams": ["${UP2}"]}],
        "routes": [route(processors=["pick"])],
    }
    gateway = await start(config, {"pick": choose})
    async with aiohttp.ClientSession() as client, client.get(f"{gateway}/v1/chat") as response:
        assert response.status == 200
    assert logged(caplog)[0]["upstream"] == start.upstreams["${UP2}"]


async def test_a_local_answer_logs_no_upstream(start, caplog):
    deny = guest(
        phases=1,
        request_headers="i32.const 403 i32.const 0 i32.const 0 i32.const 0 i32.const 0 call $send-response i32.const 1",
    )
    config = {"processors": [{"name": "deny", "module": "deny"}], "routes": [route(processors=["deny"])]}
    gateway = await start(config, {"deny": deny})
    async with aiohttp.ClientSession() as client, client.get(f"{gateway}/v1/chat") as response:
        assert response.status == 403
    assert (logged(caplog)[0]["status"], logged(caplog)[0]["upstream"]) == (403, None)
    assert logged(caplog)[0]["processors"]["deny"]["outcome"] == "respond"


@pytest.mark.parametrize(
    ("target", "headers", "status", "error"),
    [
        ("/elsewhere", {}, 404, "no_route"),
        ("/v1/chat", {"Wasmgate-Depth": "9"}, 508, "loop_detected"),
        ("/v1/chat", {"Wasmgate-Depth": "x"}, 400, "bad_depth"),
    ],
)
async def test_a_request_refused_before_any_processor_is_logged_too(start, caplog, target, headers, status, error):
    gateway = await start({"routes": [route(match={"path_prefix": "/v1/"})]})
    async with aiohttp.ClientSession() as client, client.get(f"{gateway}{target}", headers=headers) as response:
        assert response.status == status
        request_id = response.headers["X-Request-Id"]
    [line] = logged(caplog)
    assert (line["status"], line["error"], line["path"], line["request_id"]) == (status, error, target, request_id)


async def test_a_client_gone_mid_stream_is_logged_as_499(start, caplog):
    gateway = await start({"routes": [route()]})
    url = URL(gateway)
    reader, writer = await asyncio.open_connection(url.host, url.port)
    writer.write(b"GET /events HTTP/1.1\r\nHost: gateway\r\n\r\n")  # five events, 100 ms apart
    await reader.readuntil(b"event-0")
    writer.close()
    for _ in range(100):  # until the gateway has noticed
        if logged(caplog):
            break
        await asyncio.sleep(0.02)
    assert logged(caplog)[0]["status"] == 499
