"""Per-request cost of a processor with fresh and pooled instances: Rust against Go.

    python bench/instances.py [--requests 2000]

Drives requests through a chain of one header-inject processor (request and
response headers), in one process, for the Rust module and the Go one
(header-inject-go, same config), each with fresh instances per request and
with pooled instances. The figure is the whole chain per request: instance
start and init (fresh only) and both hooks.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from multidict import CIMultiDict

from wasmgate.config import ProcessorConfig
from wasmgate.gateway import CallClient, Chain, ChainRun, Processor, RequestFacts, build_processor, new_exchange
from wasmgate.runtime import Runtime

MODULES = Path(__file__).resolve().parent.parent / "host" / "wasmgate" / "modules"
CONFIG = {"request": {"add": {"x-gateway": "bench"}}, "response": {"add": {"x-served-by": "wasmgate"}}}


async def per_request(
    runtime: Runtime,
    processor: Processor,
    requests: int,
    headers: dict[str, str] | None = None,
    answer: bytes = b"{}",
) -> float:
    """Seconds per request through a chain of ``processor``, requests one after another."""
    chain, calls, scheduler = Chain([processor]), CallClient(), runtime.scheduler()
    facts = RequestFacts("POST", "/v1/chat/completions", "", "bench", "bench", "", "127.0.0.1")

    async def one() -> None:
        exchange = new_exchange(facts, CIMultiDict(headers or {}), "http://upstream.test", 1)
        run = ChainRun(chain, facts, exchange, runtime, scheduler, calls)
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
    print(f"header-inject, request and response headers, {args.requests} requests one after another:")
    for module in ("header-inject", "header-inject-go"):
        compiled = runtime.compile(module, (MODULES / f"{module}.wasm").read_bytes())
        for instances in ("fresh", "pooled"):
            spec = ProcessorConfig(
                name=f"{module}-{instances}", module=module, config=CONFIG, instances=instances, memory_limit="64MiB"
            )
            processor = build_processor(runtime, spec, compiled)
            seconds = asyncio.run(per_request(runtime, processor, args.requests))
            print(f"  {module:18} {instances:7} {seconds * 1e6:8.1f} µs per request")


if __name__ == "__main__":
    main()
