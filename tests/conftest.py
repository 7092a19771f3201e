from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from multidict import CIMultiDict

from wasmgate.chain import Chain, ChainRun, Outcome
from wasmgate.config import ProcessorConfig
from wasmgate.engine import Runtime
from wasmgate.exchange import Exchange, LocalResponse, RequestFacts
from wasmgate.executor import GuestPool
from wasmgate.processors import Processor, build_processor
from wasmgate.subrequests import CallClient

ROOT = Path(__file__).resolve().parent.parent
MODULES = ROOT / "host" / "wasmgate" / "modules"
WIT = ROOT / "wit"


@pytest.fixture(scope="session")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    runtime = Runtime(cache_dir=tmp_path_factory.mktemp("compiled"))
    yield runtime
    runtime.close()


@pytest.fixture(scope="session")
def pool() -> Iterator[GuestPool]:
    pool = GuestPool(2)
    yield pool
    pool.close()


_names = iter(range(1_000_000))


def make_processor(runtime: Runtime, wasm: bytes, name: str | None = None, **settings: Any) -> Processor:
    """A processor from module bytes; ``settings`` are processor config keys."""
    name = name or f"p{next(_names)}"
    spec = ProcessorConfig(name=name, module=name, **settings)
    return build_processor(runtime, spec, runtime.compile(name, wasm))


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
    pool: GuestPool,
    processors: list[Processor],
    *,
    headers: dict[str, str] | CIMultiDict[str] | None = None,
    body: bytes = b"",
    upstream_response: tuple[int, dict[str, str], bytes] = (200, {"content-type": "text/plain"}, b"upstream"),
) -> Driven:
    """Drives one request through a chain the way the proxy does, with whole bodies."""
    facts = RequestFacts("POST", "/v1/chat/completions", "", "req-1", "test", "", "127.0.0.1")
    exchange = Exchange(facts, CIMultiDict(headers or {}), "http://upstream.test")
    client = CallClient()
    run = ChainRun(Chain(processors), exchange, runtime, pool, client)
    try:
        forwarded = await run.process_request(body)
        upstream_headers = exchange.request_headers.copy()
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
            headers=exchange.response_headers,
            body=final,
            outcomes=run.outcomes,
        )
    finally:
        await run.finish()
        await client.close()
