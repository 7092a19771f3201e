"""The proxy over real sockets: upstreams and gateway on loopback."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from prometheus_client import REGISTRY
from yarl import URL

from wasmgate.gateway.subrequests import DEPTH_HEADER

from .conftest import free_port, module_bytes, route
from .wat import guest


async def test_a_request_reaches_the_upstream_and_its_answer_the_client(start):
    gateway = await start({"routes": [route()]})
    async with aiohttp.ClientSession() as client, client.post(f"{gateway}/v1/x?q=a%20b", data=b"hi") as response:
        echo = await response.json()
        assert response.status == 200
        assert response.headers["x-upstream"] == "up"
    assert (echo["method"], echo["path"], echo["body"]) == ("POST", "/v1/x?q=a%20b", "hi")


async def test_a_request_id_is_made_when_absent_and_passed_on(start):
    gateway = await start({"routes": [route()]})
    async with aiohttp.ClientSession() as client, client.get(f"{gateway}/") as response:
        echo = await response.json()
        assert len(response.headers["x-request-id"]) == 32
        assert echo["headers"]["x-request-id"] == response.headers["x-request-id"]


async def test_a_clients_request_id_is_kept(start):
    gateway = await start({"routes": [route()]})
    async with aiohttp.ClientSession() as client, client.get(f"{gateway}/", headers={"x-request-id": "abc"}) as r:
        assert (await r.json())["headers"]["x-request-id"] == "abc"
        assert r.headers["x-request-id"] == "abc"


async def exchange_raw(gateway: str, head: bytes) -> tuple[int, dict[str, str], bytes]:
    """Sends ``head`` (a request line and headers) as bytes, as a client no HTTP library would let be."""
    url = URL(gateway)
    reader, writer = await asyncio.open_connection(url.host, url.port)
    try:
        writer.write(head + b"Connection: close\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    top, _, body = answer.partition(b"\r\n\r\n")
    status_line, *fields = top.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (field.partition(":") for field in fields)}
    return int(status_line.split()[1]), headers, body


async def test_a_request_id_that_is_not_printable_ascii_is_replaced_by_a_new_one(start):
    gateway = await start({"routes": [route()]})
    for value in ("caf\u00e9".encode(), b"\xff", b"a b", b"x" * 200):
        status, headers, _ = await exchange_raw(
            gateway, b"GET / HTTP/1.1\r\nHost: h\r\nX-Request-Id: " + value + b"\r\n"
        )
        assert status == 200, value
        assert re.fullmatch("[0-9a-f]{32}", headers["x-request-id"]), value


async def test_a_request_id_of_printable_ascii_is_kept(start):
    gateway = await start({"routes": [route()]})
    status, headers, _ = await exchange_raw(gateway, b"GET / HTTP/1.1\r\nHost: h\r\nX-Request-Id: req-1/a.b_c:d\r\n")
    assert (status, headers["x-request-id"]) == (200, "req-1/a.b_c:d")


async def test_a_depth_header_that_is_not_ascii_digits_is_a_400(start):
    gateway = await start({"routes": [route()]})
    for value in ("\u00b2".encode(), "\u0663".encode(), b"-1", b""):
        head = b"GET / HTTP/1.1\r\nHost: h\r\n" + DEPTH_HEADER.encode() + b": " + value + b"\r\n"
        status, _, body = await exchange_raw(gateway, head)
        assert status == 400, value
        assert json.loads(body)["error"]["type"] == "bad_depth"


async def test_a_route_whose_upstream_is_the_gateway_itself_ends_in_a_508(start):
    port = free_port()
    gateway = await start({"listen": f"127.0.0.1:{port}", "routes": [route(upstream=f"http://127.0.0.1:{port}")]})
    async with aiohttp.ClientSession() as client, client.get(f"{gateway}/v1/chat") as response:
        assert response.status == 508
        assert (await response.json())["error"]["type"] == "loop_detected"


async def test_the_upstream_gets_the_depth_guard(start):
    gateway = await start({"routes": [route()]})
    async with aiohttp.ClientSession() as client, client.get(f"{gateway}/") as response:
        assert (await response.json())["headers"][DEPTH_HEADER.lower()] == "1"


SPOOFED = {
    "X-Forwarded-For": "203.0.113.7",
    "X-Forwarded-Host": "bank.example",
    "X-Forwarded-Proto": "https",
    "Forwarded": "for=203.0.113.7",
    "X-Real-IP": "203.0.113.7",
}


async def test_a_clients_forwarding_headers_are_replaced_by_the_gateways_own(start):
    gateway = await start({"routes": [route()]})
    async with aiohttp.ClientSession() as client, client.get(f"{gateway}/", headers=SPOOFED) as response:
        seen = (await response.json())["headers"]
    assert seen["x-forwarded-for"] == "127.0.0.1"
    assert seen["x-forwarded-proto"] == "http"
    assert seen["x-forwarded-host"] != "bank.example"
    assert not {"forwarded", "x-real-ip"} & set(seen)


async def test_a_trusted_proxys_forwarding_headers_are_passed_on(start):
    gateway = await start({"trusted_proxies": ["127.0.0.0/8"], "routes": [route()]})
    async with aiohttp.ClientSession() as client, client.get(f"{gateway}/", headers=SPOOFED) as response:
        seen = (await response.json())["headers"]
    assert seen["x-forwarded-for"] == "203.0.113.7, 127.0.0.1"
    assert (seen["x-forwarded-host"], seen["x-forwarded-proto"]) == ("bank.example", "https")
    assert (seen["forwarded"], seen["x-real-ip"]) == ("for=203.0.113.7", "203.0.113.7")


async def test_hop_by_hop_headers_stop_at_the_gateway_both_ways(start):
    gateway = await start({"routes": [route()]})
    headers = {"Connection": "x-secret", "x-secret": "1", "Keep-Alive": "timeout=5", "TE": "trailers", "x-kept": "2"}
    async with aiohttp.ClientSession() as client, client.get(f"{gateway}/", headers=headers) as response:
        seen = set((await response.json())["headers"])
        assert "x-private" not in response.headers  # listed in the upstream's Connection header
    assert "x-kept" in seen
    assert not {"x-secret", "keep-alive", "te"} & seen


async def test_no_matching_route_is_a_json_404(start):
    gateway = await start({"routes": [route(match={"path_prefix": "/v1/"})]})
    async with aiohttp.ClientSession() as client, client.get(f"{gateway}/other") as response:
        assert response.status == 404
        assert (await response.json())["error"]["type"] == "no_route"


async def test_routes_match_by_prefix_method_and_header_first_match_wins(start):
    gateway = await start(
        {
            "routes": [
                route(name="tagged", upstream="${UP2}", match={"path_prefix": "/v1/", "headers": {"x-tier": "gold"}}),
                route(name="posts", upstream="${UP2}", match={"path_prefix": "/v1/", "methods": ["post"]}),
                route(name="rest"),
            ]
        }
    )
    async with aiohttp.ClientSession() as client:
        served = []
        for method, headers in (("GET", {"x-tier": "gold"}), ("POST", {}), ("GET", {})):
            async with client.request(method, f"{gateway}/v1/a", headers=headers) as response:
                served.append((await response.json())["served_by"])
    assert served == ["up2", "up2", "up"]


async def test_an_unreachable_upstream_is_a_json_502(start):
    gateway = await start({"routes": [route(upstream="http://127.0.0.1:9")]})
    async with aiohttp.ClientSession() as client, client.get(f"{gateway}/") as response:
        assert response.status == 502
        assert (await response.json())["error"]["type"] == "upstream_unavailable"


async def test_an_upstream_that_does_not_answer_in_time_is_a_json_504(start):
    gateway = await start({"routes": [route(timeout="200ms")]})
    started = time.monotonic()
    async with aiohttp.ClientSession() as client, client.get(f"{gateway}/slow") as response:
        assert response.status == 504
        assert (await response.json())["error"]["type"] == "upstream_timeout"
    assert time.monotonic() - started < 3


async def test_server_sent_events_reach_the_client_one_by_one(start):
    gateway = await start({"routes": [route()]})
    arrivals = []
    async with aiohttp.ClientSession() as client, client.get(f"{gateway}/events") as response:
        async for line in response.content:
            if line.startswith(b"data:"):
                arrivals.append(time.monotonic())
    assert len(arrivals) == 5
    assert arrivals[-1] - arrivals[0] > 0.3  # the first event came while the upstream was still sending


async def test_response_body_processors_see_each_streamed_chunk_in_order(start, caplog):
    logs_chunks = guest(phases=8, response_body="i32.const 2 local.get 0 local.get 1 call $log i32.const 0")
    config = {"processors": [{"name": "watch", "module": "watch"}], "routes": [route(processors=["watch"])]}
    gateway = await start(config, {"watch": logs_chunks})
    with caplog.at_level(logging.INFO, logger="wasmgate.guest"):
        async with aiohttp.ClientSession() as client, client.get(f"{gateway}/events") as response:
            received = await response.read()
    seen = "".join(r.getMessage().removeprefix("[watch] ") for r in caplog.records if r.name == "wasmgate.guest")
    assert received.decode() == "".join(f"data: event-{i}\n\n" for i in range(5))
    assert seen == received.decode().replace("\n", "\\x0a")  # each chunk, logged with its newlines escaped


def choosing(url: str) -> bytes:
    """A guest that sends each request to ``url`` and answers 599 when the gateway refuses it."""
    return guest(
        phases=1,
        request_headers="""{s:url} i32.const 64 call $set-upstream
            i32.const 64 i32.load
            if i32.const 599 i32.const 0 i32.const 0 i32.const 0 i32.const 0 call $send-response i32.const 1 return end
            i32.const 0""",
        strings={"url": url},
    )


async def test_a_processor_can_choose_an_upstream_it_lists(start):
    config = {
        "processors": [{"name": "pick", "module": "pick", "upstreams": ["${UP2}"]}],
        "routes": [route(processors=["pick"])],
    }
    gateway = await start(config, {"pick": choosing(start.upstreams["${UP2}"] + "/any/path")})
    async with aiohttp.ClientSession() as client, client.get(f"{gateway}/v1/m") as response:
        assert (await response.json())["served_by"] == "up2"


async def test_a_processor_may_choose_another_routes_upstream_by_default(start):
    config = {
        "processors": [{"name": "pick", "module": "pick"}],
        "routes": [route(processors=["pick"]), route(name="other", upstream="${UP2}", match={"path_prefix": "/o/"})],
    }
    gateway = await start(config, {"pick": choosing(start.upstreams["${UP2}"])})
    async with aiohttp.ClientSession() as client, client.get(f"{gateway}/v1/m") as response:
        assert (await response.json())["served_by"] == "up2"


async def test_a_processor_choosing_an_origin_it_does_not_list_is_refused(start):
    config = {
        "processors": [{"name": "pick", "module": "pick", "upstreams": ["${UP}"]}],
        "routes": [route(processors=["pick"])],
    }
    gateway = await start(config, {"pick": choosing(start.upstreams["${UP2}"])})
    async with aiohttp.ClientSession() as client, client.get(f"{gateway}/v1/m") as response:
        assert response.status == 599  # the guest saw set-upstream's error


async def test_a_large_streamed_request_body_flows_through_a_streaming_processor(start):
    passthrough = guest(phases=2)
    config = {"processors": [{"name": "pass", "module": "pass"}], "routes": [route(processors=["pass"])]}
    gateway = await start(config, {"pass": passthrough})
    payload = b"0123456789" * 100_000  # 1 MB: streamed, not read whole

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(payload), 65536):
            yield payload[i : i + 65536]

    async with aiohttp.ClientSession() as client, client.post(f"{gateway}/up", data=chunks()) as response:
        echo = await response.json()
    assert echo["body"].encode("latin-1") == payload


async def test_a_processor_failing_on_a_streamed_request_body_is_its_503_not_an_upstream_error(start):
    config = {"processors": [{"name": "broken", "module": "broken"}], "routes": [route(processors=["broken"])]}
    gateway = await start(config, {"broken": guest(phases=2, request_body="unreachable")})

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(4):
            yield b"x" * 65536

    async with aiohttp.ClientSession() as client, client.post(f"{gateway}/", data=chunks()) as response:
        assert response.status == 503
        error = (await response.json())["error"]
    assert (error["type"], error["processor"]) == ("processor_failed", "broken")


async def test_a_streamed_body_over_a_buffering_processors_limit_is_a_413(start):
    buffering = guest(phases=2)
    config = {
        "processors": [{"name": "buf", "module": "buf", "body": "buffer", "max_body_bytes": "100KiB"}],
        "routes": [route(processors=["buf"])],
    }
    gateway = await start(config, {"buf": buffering})
    async with aiohttp.ClientSession() as client, client.post(f"{gateway}/", data=b"x" * 300_000) as response:
        assert response.status == 413
        assert (await response.json())["error"]["type"] == "request_too_large"


# -- the example processors, end to end ------------------------------------------------


def chat(content: str, model: str = "model-a") -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": content}]}


async def test_an_email_in_a_chat_request_reaches_the_upstream_redacted(start):
    config = {
        "processors": [{"name": "pii", "module": "pii-redact", "body": "buffer"}],
        "routes": [route(processors=["pii"])],
    }
    gateway = await start(config, {"pii-redact": module_bytes("pii-redact")})
    prompt = chat("I am jane.doe@example.com")
    async with aiohttp.ClientSession() as client, client.post(f"{gateway}/v1/chat", json=prompt) as response:
        forwarded = json.loads((await response.json())["body"])
    assert forwarded["messages"][0]["content"] == "I am [REDACTED:EMAIL]"


async def test_a_body_routed_request_reaches_the_upstream_its_model_selects(start):
    routes = {"model-a": "${UP}", "model-b": "${UP2}"}
    config = {
        "processors": [
            {
                "name": "router",
                "module": "body-router",
                "body": "buffer",
                "config": {"routes": routes},
                "upstreams": list(routes.values()),
            }
        ],
        "routes": [route(processors=["router"])],
    }
    gateway = await start(config, {"body-router": module_bytes("body-router")})
    async with aiohttp.ClientSession() as client:
        served = {}
        for model in ("model-a", "model-b"):
            async with client.post(f"{gateway}/v1/chat", json=chat("hi", model)) as response:
                echo = await response.json()
                served[model] = (echo["served_by"], echo["headers"]["x-gateway-model-name"])
    assert served == {"model-a": ("up", "model-a"), "model-b": ("up2", "model-b")}


# -- peers that break the protocol -------------------------------------------------------


async def test_a_client_gone_mid_body_is_counted_as_499_and_logs_no_traceback(start, caplog):
    config = {
        "processors": [{"name": "buf", "module": "buf", "body": "buffer"}],
        "routes": [route(name="gone", processors=["buf"])],
    }
    gateway = await start(config, {"buf": guest(phases=2)})
    url = URL(gateway)
    for length in (1000, 500_000):  # read whole, and streamed into the buffering processor
        _, writer = await asyncio.open_connection(url.host, url.port)
        writer.write(f"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: {length}\r\n\r\n".encode() + b"x" * 10)
        await writer.drain()
        writer.close()
        await writer.wait_closed()
    async with aiohttp.ClientSession() as client:
        for _ in range(100):  # until the gateway has seen both go
            if gone_requests() == 2:
                break
            async with client.get(f"{gateway}/") as response:
                assert response.status == 200
            await asyncio.sleep(0.02)
    assert gone_requests() == 2
    assert not [record for record in caplog.records if record.exc_info]


def gone_requests() -> float:
    return REGISTRY.get_sample_value("wasmgate_requests_total", {"route": "gone", "status": "499"}) or 0.0


async def test_an_upstream_body_shorter_than_its_length_is_a_502(start, caplog):
    async def short(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 10)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(short, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    buffering = guest(phases=8)
    config = {
        "processors": [{"name": "buf", "module": "buf", "body": "buffer"}],
        "routes": [route(upstream=f"http://127.0.0.1:{port}", processors=["buf"])],
    }
    gateway = await start(config, {"buf": buffering})
    try:
        async with aiohttp.ClientSession() as client, client.get(f"{gateway}/") as response:
            assert response.status == 502
            assert (await response.json())["error"]["type"] == "upstream_unavailable"
    finally:
        server.close()
    assert not [record for record in caplog.records if record.exc_info]
