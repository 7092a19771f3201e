"""token-ratelimit across the worker processes of a gateway (memory state) and across gateways (Redis)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web

from .conftest import MODULES, free_port
from .test_state import RedisServer

USAGE = {"prompt_tokens": 40, "completion_tokens": 60, "total_tokens": 100}


async def upstream_app() -> web.Application:
    """An OpenAI-style upstream whose every answer used 100 tokens; streamed at /stream."""

    async def completion(_: web.Request) -> web.Response:
        return web.json_response({"model": "m", "choices": [{"message": {"content": "hi"}}], "usage": USAGE})

    async def stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for word in ("one", "two", "three"):
            chunk = {"model": "m", "choices": [{"delta": {"content": word}}]}
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
            await asyncio.sleep(0.1)
        await response.write(f"data: {json.dumps({'model': 'm', 'choices': [], 'usage': USAGE})}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", completion)
    app.router.add_post("/stream", stream)
    return app


@pytest.fixture
async def upstream() -> AsyncIterator[str]:
    runner = web.AppRunner(await upstream_app())
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


class Gateways:
    """``wasmgate run`` processes with token-ratelimit: 1,000 tokens an hour per x-user-id."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.processes: list[subprocess.Popen[str]] = []

    def start(self, upstream: str, workers: int, state: dict[str, Any] | None = None) -> tuple[str, str]:
        listen, admin = free_port(), free_port()
        config = {
            "listen": f"127.0.0.1:{listen}",
            "admin_listen": f"127.0.0.1:{admin}",
            "module_dirs": [str(MODULES)],
            "cache_dir": str(self.directory / "cache"),
            "state": state or {},
            "processors": [
                {
                    "name": "tokens",
                    "module": "token-ratelimit",
                    "config": {
                        "limits": [{"name": "hourly", "tokens": 1000, "window": "1h"}],
                        "counter": {"header": "x-user-id"},
                    },
                }
            ],
            "routes": [{"name": "chat", "upstream": upstream, "processors": ["tokens"]}],
        }
        path = self.directory / f"gateway-{len(self.processes)}.yaml"
        path.write_text(yaml.safe_dump(config))
        command = [sys.executable, "-m", "wasmgate", "run", "--config", str(path), "--workers", str(workers)]
        self.processes.append(subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
        return f"http://127.0.0.1:{listen}", f"http://127.0.0.1:{admin}"

    def stop(self) -> None:
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            process.wait(timeout=30)


@pytest.fixture
def gateways(tmp_path: Path) -> Iterator[Gateways]:
    started = Gateways(tmp_path)
    yield started
    started.stop()


async def ready(admin: str) -> None:
    deadline = time.monotonic() + 30
    async with aiohttp.ClientSession() as client:
        while time.monotonic() < deadline:
            try:
                async with client.get(f"{admin}/readyz") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    pytest.fail("the gateway did not become ready")


async def chat(url: str, user: str, path: str = "/v1/chat/completions") -> tuple[int, str | None]:
    # A new connection for every request: the kernel spreads them over the workers.
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as client:
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
        async with client.post(f"{url}{path}", json=body, headers={"x-user-id": user}) as response:
            await response.read()
            return response.status, response.headers.get("retry-after")


async def assert_ten_then_limited(urls: list[str]) -> None:
    """1,000 tokens at 100 a request: exactly 10 requests, spread over ``urls``, then 429s; others unaffected."""
    statuses = [(await chat(urls[i % len(urls)], "alice"))[0] for i in range(12)]
    assert statuses == [200] * 10 + [429] * 2
    burst = await asyncio.gather(*(chat(urls[i % len(urls)], "alice") for i in range(20)))
    assert {status for status, _ in burst} == {429}
    assert all(retry_after is not None and 0 < int(retry_after) <= 3600 for _, retry_after in burst)
    assert (await chat(urls[0], "bob"))[0] == 200


async def test_the_memory_backend_limits_across_the_workers_of_a_gateway(gateways, upstream):
    url, admin = gateways.start(upstream, workers=2)
    await ready(admin)
    await assert_ten_then_limited([url])


async def test_two_gateways_sharing_redis_limit_together(gateways, upstream):
    redis = RedisServer()
    redis.start()
    try:
        state = {"backend": "redis", "url": redis.url}
        (first, first_admin), (second, second_admin) = (gateways.start(upstream, 1, state) for _ in range(2))
        await ready(first_admin)
        await ready(second_admin)
        await assert_ten_then_limited([first, second])
    finally:
        redis.stop()


async def test_a_streamed_response_is_charged_from_its_usage_event_as_the_events_pass(gateways, upstream):
    url, admin = gateways.start(upstream, workers=1)
    await ready(admin)
    async with aiohttp.ClientSession() as client:
        for _ in range(10):
            arrivals = []
            async with client.post(f"{url}/stream", json={}, headers={"x-user-id": "carol"}) as response:
                async for line in response.content:
                    if line.startswith(b"data:"):
                        arrivals.append(time.monotonic())
            assert len(arrivals) == 5
            assert arrivals[2] - arrivals[0] > 0.15  # events came as the upstream sent them
    assert (await chat(url, "carol", "/stream"))[0] == 429
