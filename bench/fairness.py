"""Guests that spin, against the event loop they share: stalls, deadlines, and a request served meanwhile.

    python bench/fairness.py [--spinners 8] [--deadline 0.1]

1. In one process, 4 guests spin at once (their deadline 300 ms) while
   another process writes the time to a pipe every half millisecond: how
   long each write waits for the event loop to read it, at worst and at the
   99th percentile, in epoch ticks (idle, the same measure is the baseline);
   on uvloop, the server's loop, and on asyncio's own.
2. In one process (on uvloop), N started guests spin at once in a hook with a 50 ms
   deadline, for N from 1 to 64: how far past its deadline each phase ended,
   at worst.
3. Through a gateway (one worker, a separate process): ``--spinners``
   requests on a route whose processor spins to its deadline, and meanwhile
   well-behaved requests on another route, one after another: their latency
   (the same requests with nothing spinning are the baseline).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import uvloop
import yaml
from multidict import CIMultiDict

from loopback import BENCH, CHAT, free_port, stop_all, wait_until_up
from wasmgate.config import ProcessorConfig
from wasmgate.gateway import CallClient, Chain, ChainRun, RequestFacts, build_processor, new_exchange
from wasmgate.runtime import Hook, ProcessorFailure, Runtime, Sandbox

ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))
from tests.wat import SPIN, guest  # noqa: E402 - the test suite's WAT guests, from the checkout

SPINNER = guest(phases=1, request_headers=SPIN)


async def spin(runtime: Runtime, chain: Chain, client: CallClient) -> float:
    """One request whose guest spins to its deadline; the seconds its phase took."""
    facts = RequestFacts("GET", "/", "", "bench", "bench", "", "127.0.0.1")
    run = ChainRun(
        chain, facts, new_exchange(facts, CIMultiDict(), "http://up.test", 1), runtime, runtime.scheduler(), client
    )
    await run.process_request(b"")
    await run.finish()
    return run.outcomes[chain.processors[0].name].seconds


def spinner(runtime: Runtime, name: str, deadline: str) -> Chain:
    spec = ProcessorConfig(name=name, module=name, timeouts={"request_headers": deadline})
    return Chain([build_processor(runtime, spec, runtime.compile(name, SPINNER))])


PINGER = """
import os, struct, time
while True:
    os.write(1, struct.pack("d", time.monotonic()))
    time.sleep(0.0005)
"""
"""Another process writes the time to a pipe every half millisecond: the loop's latency reading it is its stall."""


async def stalls(runtime: Runtime, loop_name: str) -> None:
    chain, client = spinner(runtime, "stall", "300ms"), CallClient()
    await asyncio.sleep(0.1)  # the janitor has instances ready
    pinger = subprocess.Popen([sys.executable, "-c", PINGER], stdout=subprocess.PIPE)
    assert pinger.stdout is not None
    fd, latencies, pending = pinger.stdout.fileno(), [], b""

    def read() -> None:
        nonlocal pending
        now = time.monotonic()
        pending += os.read(fd, 4096)
        whole = len(pending) - len(pending) % 8
        latencies.extend(now - sent for (sent,) in struct.iter_unpack("d", pending[:whole]))
        pending = pending[whole:]

    loop = asyncio.get_running_loop()
    await asyncio.sleep(0.2)
    loop.add_reader(fd, read)
    await asyncio.sleep(0.05)  # the first reads drain what the pipe held before
    latencies.clear()
    await asyncio.sleep(0.2)
    idle = sorted(latencies)
    latencies.clear()
    await asyncio.gather(*(spin(runtime, chain, client) for _ in range(4)))
    loop.remove_reader(fd)
    pinger.kill()
    pinger.wait()
    busy, tick = sorted(latencies), runtime.engine.tick
    print(f"How long I/O waits for the event loop, {loop_name} (a process writes to a pipe every 0.5 ms):")
    for label, seen in (("idle", idle), ("while 4 guests spin to a 300 ms deadline", busy)):
        worst, p99 = seen[-1], seen[int(len(seen) * 0.99)]
        print(
            f"  {label}: {len(seen)} reads, worst {worst * 1000:.2f} ms ({worst / tick:.1f} ticks),"
            f" 99th percentile {p99 * 1000:.2f} ms"
        )


async def overruns(runtime: Runtime) -> None:
    print("N guests spinning at once to a 50 ms deadline: how far past it each phase ended, at worst")
    facts = RequestFacts("GET", "/", "", "bench", "bench", "", "127.0.0.1")
    scheduler = runtime.scheduler()
    for count in (1, 4, 16, 64):
        processor = spinner(runtime, f"overrun-{count}", "50ms").processors[0]
        sandboxes = [processor.sandbox(runtime) for _ in range(count)]
        for sandbox in sandboxes:  # started first: only the hook's phase is measured
            sandbox.bind(new_exchange(facts, CIMultiDict(), "http://up.test", 1), 0, "bench", scheduler)
            await sandbox.start()

        async def phase(sandbox: Sandbox) -> float:
            started = time.monotonic()
            with contextlib.suppress(ProcessorFailure):
                await sandbox.run(Hook.REQUEST_HEADERS, None, False)
            return time.monotonic() - started

        worst = max(await asyncio.gather(*(phase(sandbox) for sandbox in sandboxes))) - 0.05
        print(f"  {count:3d} at once: {worst * 1000:6.2f} ms ({worst / runtime.engine.tick:.1f} ticks)")


def gateway_config(directory: Path, port: int, admin: int, upstream: str, deadline: float) -> Path:
    modules = directory / "modules"
    modules.mkdir()
    (modules / "spinner.wasm").write_bytes(SPINNER)
    config = {
        "listen": f"127.0.0.1:{port}",
        "admin_listen": f"127.0.0.1:{admin}",
        "module_dirs": [str(modules), str(ROOT / "host" / "wasmgate" / "modules")],
        "cache_dir": str(directory / "cache"),
        "processors": [
            {"name": "spinner", "module": "spinner", "timeouts": {"request_headers": f"{deadline * 1000:g}ms"}},
            {"name": "inject", "module": "header-inject", "config": {"request": {"add": {"x-gateway": "bench"}}}},
        ],
        "routes": [
            {"name": "spin", "match": {"path_prefix": "/spin"}, "upstream": upstream, "processors": ["spinner"]},
            {"name": "chat", "upstream": upstream, "processors": ["inject"]},
        ],
    }
    path = directory / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


async def served_meanwhile(base: str, spinners: int, deadline: float) -> None:
    async with aiohttp.ClientSession() as session:

        async def chat() -> float:
            started = time.monotonic()
            async with session.post(f"{base}/v1/chat/completions", json=CHAT) as response:
                await response.read()
                assert response.status == 200, response.status
            return time.monotonic() - started

        async def chats(until: asyncio.Future[object]) -> list[float]:
            latencies = []
            while not until.done():
                latencies.append(await chat())
            return latencies

        async def spin_request() -> int:
            async with session.get(f"{base}/spin") as response:
                await response.read()
                return response.status

        for _ in range(20):
            await chat()  # warm: connections, instances
        quiet = await chats(asyncio.ensure_future(asyncio.sleep(2 * deadline)))
        spinning = asyncio.gather(*(spin_request() for _ in range(spinners)))
        busy = await chats(spinning)
        statuses = spinning.result()
    print(f"Through a gateway: {spinners} requests spinning to a {deadline * 1000:g} ms deadline (all {set(statuses)})")
    for label, latencies in (("nothing spinning", quiet), (f"{spinners} spinning", busy)):
        median, worst = statistics.median(latencies), max(latencies)
        print(
            f"  a well-behaved request, {label}: {len(latencies)} sent,"
            f" median {median * 1000:.1f} ms, worst {worst * 1000:.1f} ms"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spinners", type=int, default=8)
    parser.add_argument("--deadline", type=float, default=0.1)
    args = parser.parse_args()
    runtime = Runtime(cache_dir=Path(tempfile.mkdtemp()))
    uvloop.run(stalls(runtime, "uvloop"))
    asyncio.run(stalls(runtime, "asyncio's"))
    uvloop.run(overruns(runtime))

    directory = Path(tempfile.mkdtemp(prefix="wasmgate-bench-"))
    upstream_port, port, admin = free_port(), free_port(), free_port()
    upstream = f"http://127.0.0.1:{upstream_port}"
    config = gateway_config(directory, port, admin, upstream, args.deadline)
    python = sys.executable
    processes = [
        subprocess.Popen(
            [python, "-m", "wasmgate.mocks.openai", "--port", str(upstream_port)], stdout=subprocess.DEVNULL
        ),
        subprocess.Popen(
            [python, "-m", "wasmgate", "run", "--workers", "1", "--config", str(config)], stderr=subprocess.DEVNULL
        ),
    ]
    try:
        base = f"http://127.0.0.1:{port}"
        for process, url in zip(processes, [f"{upstream}/v1/models", f"{base}/v1/models"], strict=True):
            wait_until_up(url, process)
        asyncio.run(served_meanwhile(base, args.spinners, args.deadline))
    finally:
        stop_all(processes, directory)


if __name__ == "__main__":
    main()
