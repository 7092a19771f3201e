from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from multidict import CIMultiDict

from wasmgate import metrics
from wasmgate.config import ProcessorConfig, parse_config
from wasmgate.gateway import (
    CallClient,
    Chain,
    ChainRun,
    LocalResponse,
    Processor,
    RequestFacts,
    build_processor,
    new_exchange,
)
from wasmgate.gateway.chain import Outcome
from wasmgate.runtime import Runtime
from wasmgate.server import listen, start_gateway
from wasmgate.state import State

from .raw import RecordingUpstream

ROOT = Path(__file__).resolve().parent.parent
MODULES = ROOT / "host" / "wasmgate" / "modules"
WIT = ROOT / "wit"


@pytest.fixture(scope="session")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Runtime:
    return Runtime(cache_dir=tmp_path_factory.mktemp("compiled"))


def free_port() -> int:
    """A loopback port free now, for a server a test starts."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


_names = iter(range(1_000_000))


def make_processor(
    runtime: Runtime, wasm: bytes, name: str | None = None, state: State | None = None, **settings: Any
) -> Processor:
    """A processor from module bytes, with the shared ``state`` given; ``settings`` are processor config keys."""
    name = name or f"p{next(_names)}"
    spec = ProcessorConfig(name=name, module=name, **settings)
    return build_processor(runtime, spec, runtime.compile(name, wasm), state)


def module_bytes(name: str) -> bytes:
    return (MODULES / f"{name}.wasm").read_bytes()


@dataclass
class Driven:
    """What a request driven through a chain came to."""

    reached_upstream: bool
    upstream_headers: CIMultiDict[str]
    upstream_body: bytes
    upstream: str
    status: int
    headers: CIMultiDict[str]
    body: bytes
    outcomes: dict[str, Outcome]


async def drive(
    runtime: Runtime,
    processors: list[Processor],
    *,
    headers: dict[str, str] | CIMultiDict[str] | None = None,
    body: bytes = b"",
    upstream_response: tuple[int, dict[str, str], bytes] = (200, {"content-type": "text/plain"}, b"upstream"),
) -> Driven:
    """Drives one request through a chain the way the proxy does, with whole bodies (and the metrics flushed)."""
    facts = RequestFacts("POST", "/v1/chat/completions", "", "req-1", "test", "", "127.0.0.1")
    exchange = new_exchange(facts, CIMultiDict(headers or {}), "http://upstream.test", len(processors))
    client = CallClient()
    run = ChainRun(Chain(processors), facts, exchange, runtime, runtime.scheduler(), client)
    try:
        forwarded = await run.process_request(body)
        upstream_headers = CIMultiDict(exchange.request_headers())
        if isinstance(forwarded, LocalResponse):
            final = await run.respond_locally(forwarded)
        else:
            status, response_headers, response_body = upstream_response
            final = await run.process_response(status, CIMultiDict(response_headers), response_body)
        return Driven(
            reached_upstream=not isinstance(forwarded, LocalResponse),
            upstream_headers=upstream_headers,
            upstream_body=b"" if isinstance(forwarded, LocalResponse) else forwarded,
            upstream=exchange.upstream,
            status=exchange.response_status,
            headers=CIMultiDict(exchange.response_headers() or ()),
            body=final,
            outcomes=run.outcomes,
        )
    finally:
        await run.finish()
        await client.close()
        metrics.flush()  # as the gateway does once no request is in flight


# -- a gateway over real sockets, in front of echo upstreams ----------------------------


class Start:
    """Starts a gateway: ``await start(config, modules={name: wasm})`` returns its URL.

    ``${UP}`` and ``${UP2}`` in the config's strings are two echo upstreams,
    whose URLs are also in ``start.upstreams``.
    """

    def __init__(self, launch: Callable[..., Awaitable[str]], upstreams: dict[str, str]) -> None:
        self._launch = launch
        self.upstreams = upstreams

    async def __call__(self, config: dict[str, Any], modules: dict[str, bytes] | None = None) -> str:
        return await self._launch(config, modules)


def _url(runner: web.AppRunner) -> str:
    host, port = runner.addresses[0][:2]
    return f"http://{host}:{port}"


def upstream_app(name: str = "up") -> web.Application:
    """Echoes what it received; also slow and server-sent-event endpoints."""

    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        return web.json_response(
            {
                "served_by": name,
                "method": request.method,
                "path": request.path_qs,
                "headers": {k.lower(): v for k, v in request.headers.items()},
                "body": body.decode("latin-1"),
            },
            headers={"x-upstream": name, "Connection": "keep-alive, x-private", "x-private": "hop"},
        )

    async def slow(_: web.Request) -> web.Response:
        await asyncio.sleep(2)
        return web.Response(text="late")

    async def events(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for i in range(5):
            await response.write(f"data: event-{i}\n\n".encode())
            await asyncio.sleep(0.1)
        await response.write_eof()
        return response

    async def usage_events(request: web.Request) -> web.StreamResponse:
        """A chat completion streamed as OpenAI does with stream_options.include_usage."""
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for delta in ("a", "b"):
            chunk = {"model": "m-s", "choices": [{"delta": {"content": delta}}]}
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
        usage = {"model": "m-s", "choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 3}}
        await response.write(f"data: {json.dumps(usage)}\n\ndata: [DONE]\n\n".encode())
        await response.write_eof()
        return response

    app = web.Application(client_max_size=64 * 2**20)
    app.router.add_get("/slow", slow)
    app.router.add_get("/events", events)
    app.router.add_get("/usage-events", usage_events)
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


@pytest.fixture
async def start(runtime, tmp_path: Path) -> AsyncIterator[Start]:
    runners: list[web.AppRunner] = []
    upstreams = {}
    for key, name in (("${UP}", "up"), ("${UP2}", "up2")):
        runners.append(await listen(upstream_app(name), "127.0.0.1:0"))
        upstreams[key] = _url(runners[-1])

    async def starter(config: dict[str, Any], modules: dict[str, bytes] | None = None) -> str:
        for name, wasm in (modules or {}).items():
            (tmp_path / f"{name}.wasm").write_bytes(wasm)
        text = json.dumps({"listen": "127.0.0.1:0", "module_dirs": [str(tmp_path)], **config})
        for key, url in upstreams.items():
            text = text.replace(key, url)
        runners.append(await start_gateway(parse_config(json.loads(text)), runtime))
        return _url(runners[-1])

    yield Start(starter, upstreams)
    for runner in reversed(runners):
        await runner.cleanup()


@pytest.fixture
async def recording() -> AsyncIterator[RecordingUpstream]:
    """An upstream that records the requests it parsed, as bytes (``raw``)."""
    upstream = RecordingUpstream()
    server = await asyncio.start_server(upstream.serve, "127.0.0.1", 0)
    upstream.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    yield upstream
    server.close()


def route(**extra: Any) -> dict[str, Any]:
    return {"name": "main", "upstream": "${UP}", **extra}


async def header_echo(name: str) -> tuple[web.AppRunner, str]:
    """An upstream on loopback answering with the value of request header ``name`` ("none" without it)."""

    async def echo(request: web.Request) -> web.Response:
        return web.Response(text=request.headers.get(name, "none"))

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", echo)
    runner = await listen(app, "127.0.0.1:0")
    return runner, _url(runner)
