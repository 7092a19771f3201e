"""``wasmgate demo``, run as a newcomer runs it: every step behaves, exit 0."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def test_the_demo_shows_every_processor_at_work_and_exits_0(tmp_path: Path):
    env = {**os.environ, "HOME": str(tmp_path)}  # a cold compile cache, as on a fresh machine
    demo = subprocess.run(
        [sys.executable, "-m", "wasmgate", "demo"], capture_output=True, text=True, timeout=120, env=env
    )
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert "6 of 6 steps behaved as expected" in demo.stdout
    passed = [line.split("  ")[1] for line in demo.stdout.splitlines() if line.startswith("ok  ")]
    assert passed == [
        "PII redaction",
        "Header injection",
        "Body-based routing",
        "Rejected by a processor",
        "Prompt guard",
        "Streaming (SSE)",
    ]
