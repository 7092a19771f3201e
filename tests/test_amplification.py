"""A guest cannot make the host copy, hold or scan more than its quota, nor outlast its deadline in a host call.

Each case passes one large buffer many times over, or a huge count, to a
host call. The host bounds what it would copy before copying it: the guest
fails with a precise cause, at once, and the worker's peak memory grows by
less than twice the guest's quota. And failures leave nothing behind: after
a thousand of them, the worker's memory is where it was.

Measured in a child process, whose peak resident memory can be reset per case.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from .conftest import ROOT
from .wat import guest

QUOTA = 16 << 20
MIB = 1 << 20
WASI = '(import "wasi_snapshot_preview1" "{0}" (func ${0} (param {1}) (result i32)))'
WASI_IMPORTS = "\n".join(
    WASI.format(name, params) for name, params in (("fd_write", "i32 i32 i32 i32"), ("random_get", "i32 i32"))
)


def pairs(count: int, ptr: int, length: int, at: int = 4096) -> str:
    """Instructions writing ``count`` (ptr, len) pairs at ``at``: a lowered list of strings or iovecs."""
    return f"""(local $i i32)
      (loop $fill
        local.get $i i32.const 8 i32.mul i32.const {at} i32.add i32.const {ptr} i32.store
        local.get $i i32.const 8 i32.mul i32.const {at + 4} i32.add i32.const {length} i32.store
        local.get $i i32.const 1 i32.add local.tee $i i32.const {count} i32.lt_u br_if $fill)"""


def headers(count: int, value_length: int, grow: int = 17, at: int = 4096) -> str:
    """Instructions growing memory by ``grow`` pages and writing ``count`` (name "x", value at 65536)
    pairs of a lowered header list at ``at``."""
    return f"""(local $i i32) (local $at i32)
      i32.const {grow} memory.grow drop
      (loop $fill
        local.get $i i32.const 16 i32.mul i32.const {at} i32.add local.set $at
        local.get $at {{s:x}} drop i32.store
        local.get $at i32.const 1 i32.store offset=4
        local.get $at i32.const 65536 i32.store offset=8
        local.get $at i32.const {value_length} i32.store offset=12
        local.get $i i32.const 1 i32.add local.tee $i i32.const {count} i32.lt_u br_if $fill)"""


GROW_TO_QUOTA = "i32.const 230 memory.grow drop"  # 231 pages: 14.4 MiB of the 16 MiB quota
GROW_1_MIB = "i32.const 17 memory.grow drop"  # past 65536 + 1 MiB

CASES = {
    # A call whose body, beside the guest's memory, passes the quota (it used to crash the worker).
    "call body past the quota": (
        f"""{GROW_TO_QUOTA}
        {{s:post}} {{s:url}} i32.const 0 i32.const 0 i32.const 65536 i32.const {14 * MIB} i32.const 0 i32.const 512
        call $call i32.const 0""",
        "memory_limit",
    ),
    "send-response, 128 headers of the same 1 MiB": (
        f"""{headers(128, MIB)}
        i32.const 200 i32.const 4096 i32.const 128 i32.const 0 i32.const 0 call $send-response i32.const 1""",
        "memory_limit",
    ),
    "send-response, 100k headers": (
        f"""{headers(100_000, 0, grow=25)}
        i32.const 200 i32.const 4096 i32.const 100000 i32.const 0 i32.const 0 call $send-response i32.const 1""",
        "memory_limit",
    ),
    "record-metric, 128 label values of the same 1 MiB": (
        f"""{pairs(128, 65536, MIB)} {GROW_1_MIB}
        i32.const 0 {{s:metric}} i32.const 0 i32.const 0 i32.const 0 i32.const 0 i32.const 0 i32.const 0
        i32.const 512 call $define-metric
        i32.const 0 i32.const 4096 i32.const 128 f64.const 1 call $record-metric i32.const 0""",
        "abi_violation",
    ),
    "fd_write, 128 iovecs of the same 1 MiB": (
        f"""{pairs(128, 65536, MIB)} {GROW_1_MIB}
        i32.const 1 i32.const 4096 i32.const 128 i32.const 512 call $fd_write drop i32.const 0""",
        None,  # written: stdout lines of the first 400 KiB are logged, the rest dropped unread
    ),
    "fd_write, 15 MiB without a newline": (
        """i32.const 240 memory.grow drop
        i32.const 4096 i32.const 65536 i32.store i32.const 4100 i32.const 15728640 i32.store
        i32.const 1 i32.const 4096 i32.const 1 i32.const 512 call $fd_write drop i32.const 0""",
        None,
    ),
    "random_get of 128 MiB": (
        "i32.const 0 i32.const 134217728 call $random_get drop i32.const 0",
        "abi_violation",
    ),
    "log, a 1 MiB message a thousand times": (
        f"""(local $n i32) {GROW_1_MIB}
        (loop $more i32.const 2 i32.const 65536 i32.const {MIB} call $log
          local.get $n i32.const 1 i32.add local.tee $n i32.const 1000 i32.lt_u br_if $more)
        i32.const 0""",
        None,
    ),
}

STRINGS = {"post": "POST", "url": "http://127.0.0.1:9/", "x": "x", "metric": "hostile"}


def hostile(case: str) -> bytes:
    body, _ = CASES[case]
    return guest(phases=1, request_headers=body, imports=WASI_IMPORTS, strings=STRINGS)


CHILD = """
import asyncio, gc, json
from pathlib import Path
from tests.conftest import drive, make_processor
from tests.test_amplification import CASES, QUOTA, hostile
from wasmgate.runtime import Runtime

def status(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024

async def main():
    runtime = Runtime()
    allow = {"allow": ["http://127.0.0.1:9"]}
    processors = {case: make_processor(runtime, hostile(case), memory_limit=QUOTA, subrequests=allow) for case in CASES}
    gc.collect()
    for case, processor in processors.items():
        Path("/proc/self/clear_refs").write_text("5")  # the peak resident size starts again from now
        before = status("VmRSS")
        driven = await drive(runtime, [processor])
        error = json.loads(driven.body)["error"] if driven.status == 503 else None
        print(json.dumps({"case": case, "status": driven.status, "cause": error and error["cause"],
                          "message": error and error["message"], "growth": status("VmHWM") - before}), flush=True)

asyncio.run(main())
"""


@pytest.fixture(scope="module")
def measured() -> dict[str, dict]:
    child = subprocess.run([sys.executable, "-c", CHILD], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert child.returncode == 0, child.stderr
    return {row["case"]: row for row in map(json.loads, child.stdout.splitlines())}


@pytest.mark.parametrize("case", list(CASES))
def test_a_host_call_bounds_what_a_guest_makes_it_hold(measured, case):
    row, (_, cause) = measured[case], CASES[case]
    # The precise cause (or none): a host call that outlasted the phase's deadline would have failed it with timeout.
    assert (row["status"], row["cause"]) == (200 if cause is None else 503, cause), row
    assert row["growth"] < 2 * QUOTA, f"peak memory grew by {row['growth'] / MIB:.0f} MiB"


FAILURES = """
import asyncio, gc, sys
from pathlib import Path
from tests.conftest import drive, make_processor
from tests.wat import guest
from tests.test_sandbox import GROW_UNTIL_REFUSED
from wasmgate.runtime import Runtime

def rss():
    line = next(l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith("VmRSS:"))
    return int(line.split()[1]) * 1024

async def main():
    runtime = Runtime()
    failing = [
        make_processor(runtime, guest(request_headers="unreachable")),
        make_processor(runtime, guest(request_headers=GROW_UNTIL_REFUSED), memory_limit="1MiB"),
        make_processor(runtime, guest(request_headers="i32.const 0 i32.const 0x7fff0000 i32.const 8 "
                                                      "call $remove-header i32.const 0")),
        make_processor(runtime, guest(request_headers="i32.const 7")),
    ]
    gc.freeze()
    gc.set_threshold(50_000, 10, 10)  # as the server tunes it: cyclic garbage is collected rarely
    async def fail(n):
        for i in range(n):
            driven = await drive(runtime, [failing[i % len(failing)]], body=b"x" * 65536)
            assert driven.status == 503
    await fail(200)
    await asyncio.sleep(0.2)  # the core frees used instances on a thread of its own
    start = rss()
    await fail(1000)
    await asyncio.sleep(0.2)
    print(start, rss())

asyncio.run(main())
"""


def test_a_thousand_failed_requests_leave_the_workers_memory_where_it_was():
    child = subprocess.run([sys.executable, "-c", FAILURES], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert child.returncode == 0, child.stderr
    start, end = map(int, child.stdout.split())
    assert end <= 1.1 * start, f"{start / MIB:.1f} MiB before, {end / MIB:.1f} MiB after"
