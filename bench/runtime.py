"""The sandbox's per-request cost, an empty hook, and the copy rate into guest memory.

    python bench/runtime.py [--module PATH] [--requests N]

Through ``wasmgate.runtime``, as the gateway calls it, on an event loop, for a
processor that asks for every phase (by default the Rust guest
``passthrough``; ``--module`` for another):

- a fresh instance per request from the processor's init image (as the
  gateway makes them) and every hook (request headers, request body,
  response headers, response body, done); the same with ``init`` run in
  each instance instead (a module that cannot be snapshotted); next to a
  store made and dropped with no instance, as a baseline from the same run;
- an empty hook (request headers) on a started instance;
- a body hook with 64 KiB and 1 MiB, next to the same hook with an empty
  body: the difference is what copying the body in costs.

Figures are the best of several rounds, in one process, with long-lived
objects frozen out of the garbage collector, as in the server.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from multidict import CIMultiDict

from wasmgate.config import ProcessorConfig
from wasmgate.gateway import Processor, RequestFacts, build_processor, new_exchange
from wasmgate.runtime import Hook, Runtime

MODULES = Path(__file__).resolve().parent.parent / "host" / "wasmgate" / "modules"
BODY = b'{"model":"m","messages":[{"role":"user","content":"hello"}]}'


async def best(call: Callable[[], Awaitable[object]], count: int, rounds: int = 10) -> float:
    """Seconds per call: the best of ``rounds`` rounds of ``count`` calls."""
    await call()
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(count):
            await call()
        times.append((time.perf_counter() - started) / count)
    return min(times)


async def main(module: Path, requests: int) -> None:
    runtime = Runtime(cache_dir=Path(tempfile.mkdtemp()))
    spec = ProcessorConfig(name="bench", module=module.stem, memory_limit="64MiB")
    compiled = runtime.compile(module.stem, module.read_bytes())
    processor = build_processor(runtime, spec, compiled)
    without_image = build_processor(runtime, spec, compiled, serving=False)
    facts = RequestFacts("POST", "/v1/chat/completions", "", "bench", "bench", "", "127.0.0.1")
    exchange = new_exchange(facts, CIMultiDict({"content-type": "application/json"}), "http://upstream.test", 1)
    exchange.set_response(200, [("content-type", "application/json")])
    gc.freeze()  # as the server does once loaded: long-lived objects leave the collector's work
    print(f"module {module.name}: hooks {sorted(hook.phase for hook in processor.hooks)}")

    async def bare() -> None:
        processor.sandbox(runtime).close()

    async def request(processor: Processor = processor) -> None:
        sandbox = processor.sandbox(runtime)
        sandbox.bind(exchange, 0, "bench", runtime.scheduler())
        await sandbox.start()
        await sandbox.run(Hook.REQUEST_HEADERS, None, False)
        await sandbox.run(Hook.REQUEST_BODY, BODY, True)
        await sandbox.run(Hook.RESPONSE_HEADERS, None, False)
        await sandbox.run(Hook.RESPONSE_BODY, BODY, True)
        await sandbox.run(Hook.DONE)
        sandbox.close()

    baseline = await best(bare, requests)
    full = await best(request, requests)
    with_init = await best(lambda: request(without_image), requests)
    print(f"store made and dropped, no instance:           {baseline * 1e6:7.2f} µs")
    print(f"fresh instance from the image + all 5 hooks:   {full * 1e6:7.2f} µs per request")
    print(f"fresh instance + init + all 5 hooks, no image: {with_init * 1e6:7.2f} µs per request")

    sandbox = processor.sandbox(runtime)
    sandbox.bind(exchange, 0, "bench", runtime.scheduler())
    await sandbox.start()
    empty = await best(lambda: sandbox.run(Hook.REQUEST_HEADERS, None, False), 20 * requests)
    print(f"an empty hook (request headers):               {empty * 1e6:7.2f} µs")
    no_body = await best(lambda: sandbox.run(Hook.REQUEST_BODY, b"", True), 20 * requests)
    for size in (64 * 1024, 1024 * 1024):
        data = b"x" * size
        hook = await best(lambda data=data: sandbox.run(Hook.REQUEST_BODY, data, True), max(20, 2**25 // size))
        copy = hook - no_body
        print(
            f"{size // 1024:5d} KiB body: the hook {hook * 1e6:8.2f} µs, of it the copy {copy * 1e6:7.2f} µs: "
            f"{size / copy / 1e9:6.1f} GB/s"
        )
    sandbox.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--module", type=Path, default=MODULES / "passthrough.wasm")
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()
    asyncio.run(main(args.module, args.requests))
