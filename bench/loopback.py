"""What the benchmarks share: the request they send, and starting and stopping services on loopback."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

BENCH = Path(__file__).resolve().parent
CHAT = {"model": "m", "messages": [{"role": "user", "content": "Write to jane.doe@example.com about the plan."}]}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until_up(url: str, process: subprocess.Popen[bytes], seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{process.args} exited with {process.returncode}")
        try:
            urllib.request.urlopen(url, timeout=1).close()
            return
        except urllib.error.HTTPError:
            return  # answering at all is up
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"{url} did not come up")


def wrk_script(directory: Path) -> Path:
    """A wrk script sending ``CHAT`` as a JSON POST."""
    script = directory / "post.lua"
    script.write_text(
        'wrk.method = "POST"\n'
        'wrk.headers["Content-Type"] = "application/json"\n'
        f"wrk.body = {json.dumps(json.dumps(CHAT))}\n"
    )
    return script


def stop_all(processes: list[subprocess.Popen[bytes]], directory: Path) -> None:
    for process in processes:
        process.terminate()
    for process in processes:
        process.wait(timeout=10)
    shutil.rmtree(directory, ignore_errors=True)
