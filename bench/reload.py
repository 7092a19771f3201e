"""Live changes under load, and cold against warm starts from an OCI registry.

    python bench/reload.py [--seconds 9]

1. wasmgate (one worker) runs header-inject from a watched directory in
   front of the mock OpenAI upstream while wrk keeps it busy. A third of the
   way in, the module file is replaced (by passthrough, which adds no
   header); two thirds in, the config changes the header's value. A probe
   reports how long each change took to show, and wrk how many requests
   failed (non-2xx and socket errors).
2. The example modules are pushed to a registry (Debian's docker-registry)
   and the gateway is started from them: once with an empty cache (pull and
   compile) and once with the warm cache and the registry stopped (so any
   registry request would fail the start). Times are to /readyz.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import yaml

from loopback import BENCH, CHAT, free_port, stop_all, wait_until_up, wrk_script

MODULES = BENCH.parent / "host" / "wasmgate" / "modules"
EXAMPLES = ("header-inject", "pii-redact", "body-router", "passthrough")


def write_atomically(path: Path, data: bytes) -> None:
    temporary = path.with_suffix(".tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)


def gateway(config: Path, log: Path) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "wasmgate", "run", "--workers", "1", "--config", str(config)]
    return subprocess.Popen(command, stderr=log.open("wb"))


def seen_header(url: str) -> str | None:
    request = urllib.request.Request(url, data=json.dumps(CHAT).encode(), headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read())["echo"]["headers"].get("x-version")


def time_to_show(url: str, expected: str | None, started: float, limit: float = 10) -> float:
    while time.monotonic() - started < limit:
        if seen_header(url) == expected:
            return time.monotonic() - started
        time.sleep(0.02)
    return float("inf")


def live_changes(directory: Path, upstream: str, seconds: int) -> None:
    modules = directory / "modules"
    modules.mkdir()
    shutil.copy(MODULES / "header-inject.wasm", modules / "inject.wasm")
    port, admin = free_port(), free_port()
    config = {
        "listen": f"127.0.0.1:{port}",
        "admin_listen": f"127.0.0.1:{admin}",
        "module_dirs": [str(modules)],
        "cache_dir": str(directory / "cache"),
        "processors": [{"name": "inject", "module": "inject", "config": {"request": {"add": {"x-version": "v1"}}}}],
        "routes": [{"name": "chat", "upstream": upstream, "processors": ["inject"]}],
    }
    config_path = directory / "gateway.yaml"
    write_atomically(config_path, yaml.safe_dump(config).encode())
    process = gateway(config_path, directory / "gateway.log")
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    script = wrk_script(directory)
    try:
        wait_until_up(f"http://127.0.0.1:{admin}/readyz", process)
        results: dict[str, str] = {}
        load = threading.Thread(
            target=lambda: results.update(
                out=subprocess.run(
                    ["wrk", "-t1", "-c16", f"-d{seconds}s", "-s", str(script), url], capture_output=True, text=True
                ).stdout
            )
        )
        load.start()
        time.sleep(seconds / 3)
        started = time.monotonic()
        write_atomically(modules / "inject.wasm", (MODULES / "passthrough.wasm").read_bytes())
        module_swap = time_to_show(url, None, started)
        time.sleep(max(0.0, seconds / 3 - module_swap))
        config["processors"][0]["module"] = "inject-v2"
        config["processors"][0]["config"]["request"]["add"]["x-version"] = "v2"
        shutil.copy(MODULES / "header-inject.wasm", modules / "inject-v2.wasm")
        started = time.monotonic()
        write_atomically(config_path, yaml.safe_dump(config).encode())
        config_swap = time_to_show(url, "v2", started)
        load.join()
    finally:
        stop_all([process], directory / "nothing")
    out = results["out"]
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    print(f"wrk -c16 -d{seconds}s through one worker while the module and then the config changed: {rps:.0f} req/s")
    print(f"  module file replaced -> served by new requests after {module_swap:.2f} s")
    print(f"  config file changed  -> served by new requests after {config_swap:.2f} s")
    print(
        f"  failed requests: non-2xx {non_2xx.group(1) if non_2xx else 0}; socket errors: "
        f"{socket_errors.group(1) if socket_errors else 'none'}"
    )


def start_times(directory: Path, upstream: str) -> None:
    registry_dir = directory / "registry"
    registry_dir.mkdir()
    address = f"127.0.0.1:{free_port()}"
    (registry_dir / "registry.yml").write_text(
        yaml.safe_dump(
            {
                "version": 0.1,
                "log": {"level": "error", "accesslog": {"disabled": True}},
                "storage": {"filesystem": {"rootdirectory": str(registry_dir / "storage")}},
                "http": {"addr": address},
            }
        )
    )
    registry = subprocess.Popen(
        ["docker-registry", "serve", str(registry_dir / "registry.yml")], stderr=subprocess.DEVNULL
    )
    wait_until_up(f"http://{address}/v2/", registry)
    for name in EXAMPLES:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "wasmgate",
                "push",
                str(MODULES / f"{name}.wasm"),
                f"oci://{address}/wasm/{name}:v1",
                "--plain-http",
                address,
            ],
            check=True,
            capture_output=True,
        )
    port, admin = free_port(), free_port()
    config_path = directory / "oci.yaml"
    config_path.write_text(
        yaml.safe_dump(
            {
                "listen": f"127.0.0.1:{port}",
                "admin_listen": f"127.0.0.1:{admin}",
                "module_dirs": [],
                "cache_dir": str(directory / "oci-cache"),
                "oci": {"plain_http": [address]},
                "processors": [
                    {"name": name, "module": f"oci://{address}/wasm/{name}:v1", "body": "buffer"} for name in EXAMPLES
                ],
                "routes": [{"name": "chat", "upstream": upstream, "processors": ["header-inject", "passthrough"]}],
            }
        )
    )

    def time_to_ready(label: str) -> None:
        started = time.monotonic()
        process = gateway(config_path, directory / f"{label}.log")
        try:
            wait_until_up(f"http://127.0.0.1:{admin}/readyz", process)
            print(f"  {label}: ready after {time.monotonic() - started:.2f} s")
        finally:
            process.terminate()
            process.wait(timeout=10)

    print(f"gateway start with {len(EXAMPLES)} modules from a registry, to /readyz:")
    time_to_ready("cold (empty cache: pull and compile)")
    registry.terminate()
    registry.wait(timeout=10)
    time_to_ready("warm (cache; the registry is stopped)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=9)
    args = parser.parse_args()
    if shutil.which("wrk") is None or shutil.which("docker-registry") is None:
        raise SystemExit("wrk and docker-registry are needed: apt-get install wrk docker-registry")
    directory = Path(tempfile.mkdtemp(prefix="wasmgate-bench-"))
    upstream_port = free_port()
    upstream = subprocess.Popen([sys.executable, "-m", "wasmgate.mocks.openai", "--port", str(upstream_port)])
    try:
        wait_until_up(f"http://127.0.0.1:{upstream_port}/v1/models", upstream)
        live_changes(directory, f"http://127.0.0.1:{upstream_port}", args.seconds)
        start_times(directory, f"http://127.0.0.1:{upstream_port}")
    finally:
        stop_all([upstream], directory)


if __name__ == "__main__":
    main()
