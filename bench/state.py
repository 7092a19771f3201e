"""What a shared-state call adds to a request, on each backend.

    python bench/state.py [--requests 2000]

token-ratelimit makes two state calls per request it limits: a read of its
identity's counter on the request, a charge on the response. Requests
without an identity make none. Both kinds go through the same chain, in one
process, on the memory backend and on a Redis (Debian's redis-server, started
here on loopback); the difference, halved, is the cost of one state call.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from instances import MODULES, per_request
from loopback import free_port
from wasmgate.config import ProcessorConfig, StateBackendKind, StateConfig
from wasmgate.gateway import build_processor
from wasmgate.runtime import Runtime
from wasmgate.state import MemoryState, State, open_state

CONFIG = {"limits": [{"name": "bench", "tokens": 10**12, "window": "1h"}], "counter": {"header": "x-user-id"}}
ANSWER = json.dumps({"model": "m", "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}).encode()


def measure(runtime: Runtime, state: State, label: str, requests: int) -> None:
    compiled = runtime.compile("token-ratelimit", (MODULES / "token-ratelimit.wasm").read_bytes())
    spec = ProcessorConfig(name=f"limit-{label}", module="token-ratelimit", config=CONFIG, instances="pooled")
    processor = build_processor(runtime, spec, compiled, state)
    without = asyncio.run(per_request(runtime, processor, requests, answer=ANSWER))
    with_calls = asyncio.run(per_request(runtime, processor, requests, {"x-user-id": "u"}, ANSWER))
    print(
        f"  {label:7} no state call {without * 1e6:7.1f} µs; two state calls {with_calls * 1e6:7.1f} µs;"
        f" one call {(with_calls - without) / 2 * 1e6:6.1f} µs"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()
    if shutil.which("redis-server") is None:
        raise SystemExit("redis-server is needed: apt-get install redis-server")
    port = free_port()
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    runtime = Runtime(cache_dir=Path(tempfile.mkdtemp()))
    memory = MemoryState.create()
    try:
        url = f"redis://127.0.0.1:{port}/0"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                redis.Redis.from_url(url).ping()
                break
            except redis.RedisError:
                time.sleep(0.05)
        print(f"token-ratelimit (pooled), {args.requests} requests one after another:")
        measure(runtime, memory, "memory", args.requests)
        measure(runtime, open_state(StateConfig(backend=StateBackendKind.REDIS, url=url)), "redis", args.requests)
    finally:
        memory.remove()
        server.terminate()
        server.wait(timeout=10)


if __name__ == "__main__":
    main()
