"""Per-request cost of a processor with fresh and pooled instances: Rust against Go.

    python bench/instances.py [--requests 2000]

Drives requests through a chain of one header-inject processor (request and
response headers), in one process, for the Rust module and the Go one
(header-inject-go, same config), each with fresh instances per request and
with pooled instances. The figure is the whole chain per request: instance
start and init (fresh only), both hooks, and the guest-thread hops.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from multidict import CIMultiDict

from wasmgate.chain import Chain, ChainRun
from wasmgate.config import ProcessorConfig
from wasmgate.engine import Runtime
from wasmgate.exchange import Exchange, RequestFacts
from wasmgate.executor import GuestPool
from wasmgate.processors import Processor, build_processor
from wasmgate.subrequests import CallClient

MODULES = Path(__file__).resolve().parent.parent / "host" / "wasmgate" / "modules"
CONFIG = {"request": {"add": {"x-gateway": "bench"}}, "response": {"add": {"x-served-by": "wasmgate"}}}


async def per_request(
    runtime: Runtime,
    pool: GuestPool,
    processor: Processor,
    requests: int,
    headers: dict[str, str] | None = None,
    answer: bytes = b"{}",
) -> float:
    """Seconds per request through a chain of ``processor``, requests one after another."""
    chain, calls = Chain([processor]), CallClient()
    facts = RequestFacts("POST", "/v1/chat/completions", "", "bench", "bench", "", "127.0.0.1")

    async def one() -> None:
        run = ChainRun(chain, Exchange(facts, CIMultiDict(headers or {}), "http://upstream.test"), runtime, pool, calls)
        await run.process_request(b"{}")
        await run.process_response(200, CIMultiDict({"content-type": "application/json"}), answer)
        await run.finish()

    for _ in range(min(200, requests)):
        await one()
    started = time.perf_counter()
    for _ in range(requests):
        await one()
    return (time.perf_counter() - started) / requests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()
    runtime = Runtime(cache_dir=Path(tempfile.mkdtemp()))
    pool = GuestPool(1)
    print(f"header-inject, request and response headers, {args.requests} requests one after another:")
    for module in ("header-inject", "header-inject-go"):
        compiled = runtime.compile(module, (MODULES / f"{module}.wasm").read_bytes())
        for instances in ("fresh", "pooled"):
            spec = ProcessorConfig(
                name=f"{module}-{instances}", module=module, config=CONFIG, instances=instances, memory_limit="64MiB"
            )
            processor = build_processor(runtime, spec, compiled)
            seconds = asyncio.run(per_request(runtime, pool, processor, args.requests))
            print(f"  {module:18} {instances:7} {seconds * 1e6:8.1f} µs per request")
    pool.close()
    runtime.close()


if __name__ == "__main__":
    main()
