"""Many requests waiting on sub-requests at once, on one worker.

    python bench/subrequests.py [--requests 1000] [--delay 0.1]

Starts, on loopback: the mock OpenAI upstream, two mock moderation services
(one answering after ``--delay``, one at once), and wasmgate (one worker)
with prompt-guard on two routes, one per moderation service. Then sends
``--requests`` chat requests all at once through each route and reports the
wall time of each batch, the ideal (every request waits ``--delay`` at the
same time, so the batch takes ``--delay`` plus the batch's own work, taken
from the no-wait route), and the gateway's thread count and peak RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import yaml

from loopback import BENCH, CHAT, free_port, stop_all, wait_until_up


def gateway_config(directory: Path, port: int, admin: int, upstream: str, slow: str, fast: str) -> Path:
    def guard(name: str, origin: str) -> dict[str, object]:
        return {
            "name": name,
            "module": "prompt-guard",
            "body": "buffer",
            "config": {"moderation_url": f"{origin}/v1/moderations", "categories": ["violence"]},
            "subrequests": {"allow": [origin], "timeout": "10s", "max_concurrent": 4},
            "timeouts": {"request_body": "30s"},
        }

    config = {
        "listen": f"127.0.0.1:{port}",
        "admin_listen": f"127.0.0.1:{admin}",
        "module_dirs": [str(BENCH.parent / "host" / "wasmgate" / "modules")],
        "cache_dir": str(directory / "cache"),
        "processors": [guard("slow-guard", slow), guard("fast-guard", fast)],
        "routes": [
            {
                "name": "slow",
                "match": {"headers": {"x-bench": "slow"}},
                "upstream": upstream,
                "processors": ["slow-guard"],
            },
            {"name": "fast", "upstream": upstream, "processors": ["fast-guard"]},
        ],
        "upstream": {"max_connections": 2000},
    }
    path = directory / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


async def batch(url: str, count: int, route: str) -> tuple[float, int]:
    """Wall seconds for ``count`` requests sent at once on ``route``, and how many got a 200."""
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as client:

        async def one() -> int:
            async with client.post(url, json=CHAT, headers={"x-bench": route}) as response:
                await response.read()
                return response.status

        started = time.monotonic()
        statuses = await asyncio.gather(*(one() for _ in range(count)))
        return time.monotonic() - started, statuses.count(200)


def process_status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return dict(line.split(":\t", 1) for line in lines if ":\t" in line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--delay", type=float, default=0.1)
    args = parser.parse_args()

    directory = Path(tempfile.mkdtemp(prefix="wasmgate-bench-"))
    upstream_port, slow_port, fast_port, gateway_port, admin_port = (free_port() for _ in range(5))
    upstream, slow, fast = (f"http://127.0.0.1:{port}" for port in (upstream_port, slow_port, fast_port))
    python = sys.executable
    processes = [
        subprocess.Popen([python, "-m", "wasmgate.mocks.openai", "--port", str(upstream_port)]),
        subprocess.Popen(
            [python, "-m", "wasmgate.mocks.moderation", "--port", str(slow_port), "--delay", str(args.delay)]
        ),
        subprocess.Popen([python, "-m", "wasmgate.mocks.moderation", "--port", str(fast_port)]),
    ]
    config = gateway_config(directory, gateway_port, admin_port, upstream, slow, fast)
    gateway = subprocess.Popen(
        [python, "-m", "wasmgate", "run", "--workers", "1", "--config", str(config)], stderr=subprocess.DEVNULL
    )
    processes.append(gateway)
    url = f"http://127.0.0.1:{gateway_port}/v1/chat/completions"
    try:
        wait_until_up(f"{upstream}/v1/models", processes[0])
        wait_until_up(f"http://127.0.0.1:{admin_port}/healthz", gateway)
        asyncio.run(batch(url, 100, "fast"))  # warm up
        threads_before = int(process_status(gateway.pid)["Threads"])
        fast_seconds, fast_ok = asyncio.run(batch(url, args.requests, "fast"))
        slow_seconds, slow_ok = asyncio.run(batch(url, args.requests, "slow"))
        status = process_status(gateway.pid)
    finally:
        stop_all(processes, directory)

    ideal = args.delay + fast_seconds
    print(f"{args.requests} requests at once, one worker, prompt-guard calling a moderation service")
    print(f"  moderation answers at once:        {fast_seconds:6.2f} s  ({fast_ok} x 200)")
    print(f"  moderation answers after {args.delay * 1000:.0f} ms:   {slow_seconds:6.2f} s  ({slow_ok} x 200)")
    print(f"  ideal with the wait ({args.delay * 1000:.0f} ms + the batch's own work): {ideal:.2f} s;")
    print(f"  ratio to ideal {slow_seconds / ideal:.2f}; to the bare wait {slow_seconds / args.delay:.1f}")
    print(f"  gateway threads: {threads_before} before, {status['Threads'].strip()} after")
    print(f"  gateway peak RSS: {status['VmHWM'].strip()}")


if __name__ == "__main__":
    main()
