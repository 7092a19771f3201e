"""The sandbox's per-request cost, and the host's copy rate into guest memory.

    python bench/runtime.py [--module PATH] [--requests N]

Prints, for a processor that asks for every phase (by default the trivial
Rust guest ``passthrough``): a fresh sandbox per request with init and
every hook (request headers, request body, response headers, response body,
done), next to a sandbox started and dropped with no hook, as a baseline
from the same run. Then the copy rate of a body into guest memory, for
64 KiB and 1 MiB: the copy alone, and a whole body hook (allocation in the
guest, copy, call).

Figures are the best of several rounds, in one process, with the garbage
collector on and long-lived objects frozen, as in the server.
"""

from __future__ import annotations

import argparse
import gc
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from multidict import CIMultiDict

from wasmgate.abi import Hook
from wasmgate.config import ProcessorConfig
from wasmgate.engine import Runtime
from wasmgate.exchange import Exchange, RequestFacts
from wasmgate.processors import build_processor
from wasmgate.sandbox import Sandbox

MODULES = Path(__file__).resolve().parent.parent / "host" / "wasmgate" / "modules"


def best(fn: Callable[[], None], count: int, rounds: int = 10) -> float:
    """Seconds per call: the best of ``rounds`` rounds of ``count`` calls."""
    fn()
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(count):
            fn()
        times.append((time.perf_counter() - started) / count)
    return min(times)


def copy_rates(sandbox: Sandbox, exchange: Exchange, size: int) -> tuple[float, float]:
    """Seconds to copy ``size`` bytes into guest memory, and to run a body hook with them."""
    data = b"x" * size
    memory = sandbox.memory()
    target = memory.alloc(data, "bench")
    copy = best(lambda: memory.write(target, data, "bench"), max(20, 2**26 // size))
    hook = best(lambda: sandbox.run(Hook.REQUEST_BODY, exchange, data, True), max(20, 2**25 // size))
    return copy, hook


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--module", type=Path, default=MODULES / "passthrough.wasm")
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()

    runtime = Runtime(cache_dir=Path(tempfile.mkdtemp()))
    spec = ProcessorConfig(name="bench", module=args.module.stem, memory_limit="64MiB")
    processor = build_processor(runtime, spec, runtime.compile(args.module.stem, args.module.read_bytes()))
    facts = RequestFacts("POST", "/v1/chat/completions", "", "bench", "bench", "", "127.0.0.1")
    exchange = Exchange(facts, CIMultiDict({"content-type": "application/json"}), "http://upstream.test")
    exchange.set_response(200, CIMultiDict({"content-type": "application/json"}))
    body = b'{"model":"m","messages":[{"role":"user","content":"hello"}]}'
    gc.freeze()  # as the server does once loaded: long-lived objects leave the collector's work
    print(f"module {args.module.name}: hooks {sorted(hook.phase for hook in processor.hooks)}")

    def bare() -> None:
        Sandbox(runtime, processor).close()

    def request() -> None:
        sandbox = Sandbox(runtime, processor)
        sandbox.init(processor.config_json)
        sandbox.run(Hook.REQUEST_HEADERS, exchange, None, False)
        sandbox.run(Hook.REQUEST_BODY, exchange, body, True)
        sandbox.run(Hook.RESPONSE_HEADERS, exchange, None, False)
        sandbox.run(Hook.RESPONSE_BODY, exchange, body, True)
        sandbox.run(Hook.DONE, exchange)
        sandbox.close()

    baseline = best(bare, args.requests)
    full = best(request, args.requests)
    print(f"sandbox start and drop, no hook:              {baseline * 1e6:7.1f} µs per request")
    print(f"sandbox + init + all 5 hooks (fresh instance): {full * 1e6:7.1f} µs per request")

    sandbox = Sandbox(runtime, processor)
    sandbox.init(processor.config_json)
    for size in (64 * 1024, 1024 * 1024):
        copy, hook = copy_rates(sandbox, exchange, size)
        print(
            f"{size // 1024:5d} KiB body: copy alone {size / copy / 1e9:6.2f} GB/s; "
            f"whole body hook {size / hook / 1e9:6.2f} GB/s ({hook * 1e6:.1f} µs)"
        )
    sandbox.close()
    runtime.close()


if __name__ == "__main__":
    main()
