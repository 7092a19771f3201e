"""The gateway's throughput and latency against a plain aiohttp proxy.

    python bench/gateway.py [--seconds 10] [--connections 32] [--rounds 2]

Starts, on loopback: the mock OpenAI upstream; bench/baseline_proxy.py in
front of it; and two wasmgates (one worker each) in front of it with a
three-processor chain: header-inject (request and response headers),
pii-redact (on the buffered request body) and a response-body processor
(passthrough asking for response bodies only), one with fresh instances per
request (the default) and one with pooled instances; and a wasmgate whose
route has no processors, which shows what the gateway's own HTTP handling
costs. wrk (Debian's) sends the same chat request with an e-mail address in
it through each, in alternating rounds; the best round of each is
reported, with the ratio of each gateway's throughput to the baseline's.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from loopback import BENCH, free_port, stop_all, wait_until_up, wrk_script


def gateway_config(directory: Path, port: int, admin: int, upstream: str, instances: str | None) -> Path:
    """The bench's config: three processors with ``instances`` fresh or pooled, or none for None."""
    processors = [
        {
            "name": "inject",
            "module": "header-inject",
            "config": {"request": {"add": {"x-gateway": "bench"}}, "response": {"add": {"x-served-by": "wasmgate"}}},
        },
        {"name": "pii", "module": "pii-redact", "body": "buffer"},
        {"name": "meter", "module": "passthrough", "config": {"phases": ["response_body"]}},
    ]
    config = {
        "listen": f"127.0.0.1:{port}",
        "admin_listen": f"127.0.0.1:{admin}",
        "module_dirs": [str(BENCH.parent / "host" / "wasmgate" / "modules")],
        "cache_dir": str(directory / "cache"),
        "processors": [{**processor, "instances": instances} for processor in processors] if instances else [],
        "routes": [
            {"name": "chat", "upstream": upstream, "processors": [p["name"] for p in processors] if instances else []}
        ],
    }
    path = directory / f"gateway-{instances or 'none'}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def wrk(url: str, seconds: int, connections: int, script: Path) -> dict[str, float]:
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script), url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout

    def latency(percentile: str) -> float:
        value, unit = re.search(rf"^\s+{percentile}%\s+([\d.]+)(us|ms|s)$", out, re.M).groups()
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "p50": latency("50"),
        "p99": latency("99"),
        "errors": float(errors.group(1)) if errors else 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is needed: apt-get install wrk")

    directory = Path(tempfile.mkdtemp(prefix="wasmgate-bench-"))
    script = wrk_script(directory)
    upstream_port, baseline_port = free_port(), free_port()
    upstream = f"http://127.0.0.1:{upstream_port}"
    python = sys.executable
    processes = [
        subprocess.Popen([python, "-m", "wasmgate.mocks.openai", "--port", str(upstream_port)]),
        subprocess.Popen(
            [python, str(BENCH / "baseline_proxy.py"), "--port", str(baseline_port), "--upstream", upstream]
        ),
    ]
    targets = {"aiohttp pass-through proxy": f"http://127.0.0.1:{baseline_port}/v1/chat/completions"}
    for instances in ("fresh", "pooled", None):
        port, admin = free_port(), free_port()
        config = gateway_config(directory, port, admin, upstream, instances)
        processes.append(
            subprocess.Popen(
                [python, "-m", "wasmgate", "run", "--workers", "1", "--config", str(config)], stderr=subprocess.DEVNULL
            )
        )
        name = f"wasmgate, 3 processors, {instances}" if instances else "wasmgate, no processors"
        targets[name] = f"http://127.0.0.1:{port}/v1/chat/completions"
    try:
        for process, url in zip(processes, [f"{upstream}/v1/models", *targets.values()], strict=True):
            wait_until_up(url, process)
        best: dict[str, dict[str, float]] = {}
        for url in targets.values():
            wrk(url, 2, args.connections, script)  # warm up: connections, caches, compiled modules
        for _ in range(args.rounds):
            for name, url in targets.items():
                result = wrk(url, args.seconds, args.connections, script)
                if name not in best or result["rps"] > best[name]["rps"]:
                    best[name] = result
    finally:
        stop_all(processes, directory)

    print(f"wrk -t1 -c{args.connections} -d{args.seconds}s, POST chat completion, best of {args.rounds} rounds")
    print(f"{'':34} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'non-2xx':>8} {'ratio':>6}")
    baseline = best["aiohttp pass-through proxy"]["rps"]
    for name, result in best.items():
        print(
            f"{name:34} {result['rps']:9.0f} {result['p50']:8.2f} {result['p99']:8.2f} {result['errors']:8.0f}"
            f" {result['rps'] / baseline:6.2f}"
        )


if __name__ == "__main__":
    main()
