"""Hostile and broken guests: each fails its request with a precise cause,
and the processor serves the next request."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Awaitable

import pytest

from wasmgate.runtime import Cause, Hook, ProcessorFailure

from .conftest import ROOT, drive, make_processor
from .wat import CONTINUE, PAUSE, REALLOC, RESPOND, SPIN, guest, header_setter

HOOK_PARTS = {
    Hook.REQUEST_HEADERS: "request_headers",
    Hook.REQUEST_BODY: "request_body",
    Hook.RESPONSE_HEADERS: "response_headers",
    Hook.RESPONSE_BODY: "response_body",
}


def failure_of(driven) -> dict:
    assert driven.status == 503, driven.body
    return json.loads(driven.body)["error"]


def when_asked(misbehaviour: str) -> bytes:
    """A guest that misbehaves in request_headers only when the request has ``x-misbehave``."""
    return guest(
        request_headers=f"""
            i32.const 0 {{s:trigger}} i32.const 512 call $get-header
            i32.const 512 i32.load8_u
            if {misbehaviour} end
            i32.const 0""",
        strings={"trigger": "x-misbehave"},
    )


async def assert_fails_then_serves(runtime, processor, cause: str) -> None:
    """One request fails with ``cause``; the next one on the same processor goes through."""
    error = failure_of(await drive(runtime, [processor], headers={"x-misbehave": "1"}))
    assert error["cause"] == cause
    assert (await drive(runtime, [processor])).reached_upstream


# -- deadlines ---------------------------------------------------------------------


@pytest.mark.parametrize("hook", list(HOOK_PARTS), ids=lambda h: h.phase)
async def test_a_guest_spinning_in_a_phase_fails_with_timeout_naming_it(runtime, hook):
    processor = make_processor(runtime, guest(**{HOOK_PARTS[hook]: SPIN}), timeouts={hook.phase: "50ms"})
    started = time.monotonic()
    driven = await drive(runtime, [processor], body=b"body")
    elapsed = time.monotonic() - started
    error = failure_of(driven)
    assert (error["cause"], error["phase"], error["processor"]) == ("timeout", hook.phase, processor.name)
    assert "50 ms deadline" in error["message"]
    assert elapsed < 2.0  # one deadline, not a stuck worker


SPIN_ON_LARGE_ALLOCATIONS = REALLOC.replace(
    "(local $p i32)", "(local $p i32) local.get 3 i32.const 1000 i32.gt_u if (loop $forever (br $forever)) end"
)


def test_a_cabi_realloc_spinning_inside_a_host_call_ends_at_the_deadline():
    # The guest spins in the cabi_realloc the host calls to copy the body in.
    # In a child process, so a regression fails instead of hanging.
    script = """
import asyncio
from tests.conftest import drive, make_processor
from tests.test_sandbox import SPIN_ON_LARGE_ALLOCATIONS
from tests.wat import guest
from wasmgate.runtime import Runtime

runtime = Runtime()
processor = make_processor(runtime, guest(realloc=SPIN_ON_LARGE_ALLOCATIONS), timeouts={"request_body": "50ms"})
driven = asyncio.run(drive(runtime, [processor], body=b"x" * 4096))
print(driven.status, driven.body.decode())
"""
    started = time.monotonic()
    child = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert child.returncode == 0, child.stderr
    status, body = child.stdout.split(" ", 1)
    error = json.loads(body)["error"]
    assert (status, error["cause"], error["phase"]) == ("503", "timeout", "request_body")
    assert time.monotonic() - started < 30


async def test_after_a_timeout_the_next_request_on_the_same_processor_succeeds(runtime):
    processor = make_processor(runtime, when_asked(SPIN), timeouts={"request_headers": "50ms"})
    await assert_fails_then_serves(runtime, processor, "timeout")


def test_a_start_function_that_spins_fails_loading_with_timeout(runtime):
    spinning_start = guest(extra=f"(func $spin {SPIN}) (start $spin)")
    with pytest.raises(ProcessorFailure) as raised:
        make_processor(runtime, spinning_start, timeouts={"init": "30ms"})
    assert raised.value.cause is Cause.TIMEOUT


def test_a_host_call_from_a_start_function_is_an_abi_violation(runtime):
    logging_start = guest(extra="(func $hello i32.const 2 {s:msg} call $log) (start $hello)", strings={"msg": "hi"})
    with pytest.raises(ProcessorFailure) as raised:
        make_processor(runtime, logging_start)
    assert raised.value.cause is Cause.ABI_VIOLATION
    assert "start function" in raised.value.detail


def test_a_guest_spinning_in_init_fails_loading_with_timeout(runtime):
    with pytest.raises(ProcessorFailure) as raised:
        make_processor(runtime, guest(init=SPIN), timeouts={"init": "30ms"})
    assert raised.value.cause is Cause.TIMEOUT


async def loop_turns_while(work: Awaitable[object]) -> int:
    """How many times a task sleeping 1 ms at a time got to run while ``work`` ran."""
    turns = 0

    async def ticker() -> None:
        nonlocal turns
        while True:
            await asyncio.sleep(0.001)
            turns += 1

    task = asyncio.create_task(ticker())
    await work
    task.cancel()
    return turns


async def test_the_event_loop_keeps_running_while_guests_spin(runtime):
    processor = make_processor(runtime, guest(request_headers=SPIN), timeouts={"request_headers": "300ms"})
    spinning = asyncio.gather(*(drive(runtime, [processor]) for _ in range(4)))
    # The loop runs at most one slice of guest code (a tick or two) between looks at I/O, so the
    # ticker runs between slices all along; starved, it would run a handful of times at most.
    assert await loop_turns_while(spinning) > 30
    assert all(driven.status == 503 for driven in spinning.result())


async def test_a_short_hook_runs_between_the_slices_of_spinning_guests(runtime):
    spinner = make_processor(runtime, guest(request_headers=SPIN), timeouts={"request_headers": "300ms"})
    short = make_processor(runtime, header_setter("x-served", "yes"))
    finished: list[str] = []

    async def run(processor, name: str) -> None:
        await drive(runtime, [processor])
        finished.append(name)

    spinning = [asyncio.create_task(run(spinner, f"spinner-{i}")) for i in range(4)]
    await asyncio.sleep(0.01)  # the spinners have started
    await asyncio.gather(run(short, "short"), *spinning)
    assert finished[0] == "short"  # served while all four still spun


COUNT_TO_110M = """(local $i i32)
  (loop $count local.get $i i32.const 1 i32.add local.tee $i i32.const 110000000 i32.lt_u br_if $count)
  i32.const 0"""
"""About 30 ms of guest time on the project's machines."""


async def test_a_deadline_is_wall_clock_time_waiting_for_the_loop_included(runtime):
    processor = make_processor(runtime, guest(request_headers=COUNT_TO_110M), timeouts={"request_headers": "100ms"})
    counted = asyncio.ensure_future(drive(runtime, [processor]))
    while not counted.done():  # the loop runs only between 20 ms stretches of other work
        time.sleep(0.02)
        await asyncio.sleep(0)
    # The guest gets a slice per loop turn: about 30 turns of 20 ms to do its 30 ms of work, far
    # past its 100 ms deadline, which counts every millisecond the phase takes.
    error = failure_of(await counted)
    assert (error["cause"], error["phase"]) == ("timeout", "request_headers")


# -- memory ----------------------------------------------------------------------

GROW_UNTIL_REFUSED = """
  (block $refused (loop $grow
    i32.const 16 memory.grow i32.const -1 i32.eq br_if $refused
    br $grow))
  unreachable
"""
GROW_ONE_MIB_PAST_QUOTA = "i32.const 17 memory.grow drop i32.const 0"  # 1 page + 17 pages > 1 MiB


@pytest.mark.parametrize("hook", list(HOOK_PARTS), ids=lambda h: h.phase)
async def test_a_memory_bomb_fails_with_memory_limit(runtime, hook):
    processor = make_processor(runtime, guest(**{HOOK_PARTS[hook]: GROW_UNTIL_REFUSED}), memory_limit="1MiB")
    error = failure_of(await drive(runtime, [processor], body=b"body"))
    assert (error["cause"], error["phase"]) == ("memory_limit", hook.phase)
    assert "over its 1.0 MiB quota" in error["message"]


async def test_after_a_memory_limit_failure_the_next_request_on_the_same_processor_succeeds(runtime):
    processor = make_processor(runtime, when_asked(GROW_UNTIL_REFUSED), memory_limit="1MiB")
    await assert_fails_then_serves(runtime, processor, "memory_limit")


async def test_a_guest_that_grows_past_its_quota_without_trapping_fails_with_memory_limit(runtime):
    processor = make_processor(runtime, guest(request_headers=GROW_ONE_MIB_PAST_QUOTA), memory_limit="1MiB")
    error = failure_of(await drive(runtime, [processor]))
    assert error["cause"] == "memory_limit"


async def test_a_module_whose_initial_memory_is_over_quota_fails_with_memory_limit(runtime):
    with pytest.raises(ProcessorFailure) as raised:
        make_processor(runtime, guest(memory_pages=40), memory_limit="1MiB")
    assert raised.value.cause is Cause.MEMORY_LIMIT


async def test_a_buffered_body_over_the_quota_fails_with_memory_limit(runtime):
    processor = make_processor(runtime, guest(), body="buffer", memory_limit="64KiB", max_body_bytes="1MiB")
    error = failure_of(await drive(runtime, [processor], body=b"x" * 100_000))
    assert (error["cause"], error["phase"]) == ("memory_limit", "request_body")


async def test_a_buffered_body_over_max_body_bytes_is_refused_with_413(runtime):
    processor = make_processor(runtime, guest(), body="buffer", max_body_bytes="1KiB")
    driven = await drive(runtime, [processor], body=b"x" * 2000)
    assert driven.status == 413
    assert not driven.reached_upstream


async def test_a_header_flood_fails_with_memory_limit(runtime):
    flood = "(loop $more i32.const 0 {s:name} {s:value} call $add-header br $more) i32.const 0"
    wasm = guest(request_headers=flood, strings={"name": "x-flood", "value": "v" * 1000})
    error = failure_of(await drive(runtime, [make_processor(runtime, wasm)]))
    assert error["cause"] == "memory_limit"


async def test_a_guest_never_sees_what_a_previous_request_left_in_memory(runtime):
    # Counts its calls in memory and answers with the count as the status: 200 + calls - 1.
    count = """
      i32.const 64 i32.const 64 i32.load i32.const 1 i32.add i32.store
      i32.const 199 i32.const 64 i32.load i32.add i32.const 0 i32.const 0 i32.const 0 i32.const 0
      call $send-response i32.const 1"""
    processor = make_processor(runtime, guest(request_headers=count))
    statuses = [(await drive(runtime, [processor])).status for _ in range(3)]
    assert statuses == [200, 200, 200]


# -- traps and ABI violations ----------------------------------------------------


async def test_a_trap_fails_with_trap_and_wasmtimes_reason(runtime):
    processor = make_processor(runtime, guest(request_headers="i32.const 1 i32.const 0 i32.div_u"))
    error = failure_of(await drive(runtime, [processor]))
    assert error["cause"] == "trap"
    assert "divide by zero" in error["message"]


@pytest.mark.parametrize(
    ("hook_body", "reason"),
    [
        ("i32.const 0 i32.const 0x7fff0000 i32.const 8 call $remove-header i32.const 0", "past the end"),
        ("i32.const 0 {s:bad-utf8} call $remove-header i32.const 0", "not valid UTF-8"),
        ("i32.const 2 i32.const 0 i32.const 0x7fff0000 call $log i32.const 0", "log's message"),
        ("i32.const 9 {s:name} call $remove-header i32.const 0", "not a valid Message"),
        ("i32.const 0 {s:content-length} {s:name} call $set-header i32.const 0", "managed by the gateway"),
        ("i32.const 0 {s:name} {s:crlf} call $set-header i32.const 0", "CR, LF or NUL"),
        ("i32.const 0 {s:name} {s:ctrl} call $set-header i32.const 0", "control character 0x01"),
        ("i32.const 0 {s:name} {s:del} call $set-header i32.const 0", "control character 0x7f"),
        ("i32.const 0 {s:name} {s:padded} call $set-header i32.const 0", "starts or ends with whitespace"),
        ("i32.const 0 {s:space} {s:name} call $set-header i32.const 0", "not a valid header name"),
        ("i32.const 1 {s:name} {s:name} call $set-header i32.const 0", "no response"),
        ("{s:name} call $replace-body i32.const 0", "has no body"),
        ("i32.const 99 i32.const 0 i32.const 0 i32.const 0 i32.const 0 call $send-response i32.const 1", "HTTP status"),
        (RESPOND, "without calling send-response"),
        (
            "i32.const 200 i32.const 0 i32.const 0 i32.const 0 i32.const 0 call $send-response " + CONTINUE,
            "returned continue",
        ),
        (PAUSE, "nothing to wait for"),
        ("i32.const 7", "not an action"),
    ],
)
async def test_abi_misuse_fails_with_abi_violation(runtime, hook_body, reason):
    strings = {
        "name": "x-name",
        "bad-utf8": b"x-\xff",
        "content-length": "content-length",
        "crlf": "a\r\nb",
        "ctrl": "a\x01b",
        "del": "a\x7fb",
        "padded": " a",
        "space": "a b",
    }
    processor = make_processor(runtime, guest(request_headers=hook_body, strings=strings))
    error = failure_of(await drive(runtime, [processor]))
    assert error["cause"] == "abi_violation"
    assert reason in error["message"]


async def test_init_returning_an_out_of_bounds_result_is_an_abi_violation(runtime):
    with pytest.raises(ProcessorFailure) as raised:
        make_processor(runtime, guest(init="i32.const 0x7ffffff0"))
    assert raised.value.cause is Cause.ABI_VIOLATION


async def test_a_host_call_from_inside_cabi_realloc_is_refused_as_reentrant(runtime):
    reentrant = """
  (func $realloc (export "cabi_realloc") (param i32 i32 i32 i32) (result i32)
    i32.const 4 i32.const 1024 i32.const 4 call $log
    i32.const 2048)"""
    wasm = guest(
        realloc=reentrant,
        request_headers="i32.const 0 {s:name} i32.const 64 call $get-header i32.const 0",
        strings={"name": "host"},
    )
    processor = make_processor(runtime, wasm)
    error = failure_of(await drive(runtime, [processor], headers={"host": "example"}))
    assert error["cause"] == "abi_violation"
    assert "re-entrant" in error["message"]


async def test_set_upstream_after_the_request_started_is_refused(runtime):
    wasm = guest(
        response_headers="{s:url} i32.const 64 call $set-upstream i32.const 0", strings={"url": "http://elsewhere.test"}
    )
    error = failure_of(await drive(runtime, [make_processor(runtime, wasm)]))
    assert error["cause"] == "abi_violation"
    assert "after the upstream request started" in error["message"]


async def test_init_returning_an_error_fails_loading_with_the_guests_message(runtime):
    # result<phases, string>: tag 1 at 0, the error's (ptr, len) at 4 and 8
    init = """i32.const 0 i32.const 1 i32.store8
      i32.const 4 i32.const 1024 i32.store i32.const 8 i32.const 9 i32.store i32.const 0"""
    with pytest.raises(ProcessorFailure) as raised:
        make_processor(runtime, guest(init=init, strings={"error": "bad key x"}))
    assert raised.value.cause is Cause.INIT_FAILED
    assert "bad key x" in str(raised.value)


async def test_a_long_init_error_is_cut_at_a_character_boundary_and_is_still_init_failed(runtime):
    message = "a" + "\u00e9" * 3000  # two bytes a character: 4096 bytes end inside one
    init = f"""i32.const 0 i32.const 1 i32.store8
      i32.const 4 i32.const 1024 i32.store i32.const 8 i32.const {len(message.encode())} i32.store i32.const 0"""
    with pytest.raises(ProcessorFailure) as raised:
        make_processor(runtime, guest(init=init, strings={"error": message}, memory_pages=2))
    assert raised.value.cause is Cause.INIT_FAILED
    assert raised.value.detail == message[:2048]


async def test_a_guest_log_line_cannot_start_a_line_of_its_own(runtime, caplog):
    forged = 'ok\nwasmgate.access: {"status": 200}'
    wasm = guest(request_headers="i32.const 2 {s:msg} call $log i32.const 0", strings={"msg": forged})
    with caplog.at_level("INFO", logger="wasmgate.guest"):
        await drive(runtime, [make_processor(runtime, wasm)])
    [line] = [record.getMessage() for record in caplog.records if record.name == "wasmgate.guest"]
    assert line.endswith('ok\\x0awasmgate.access: {"status": 200}')


async def test_an_init_error_cannot_start_a_line_of_its_own(runtime):
    init = """i32.const 0 i32.const 1 i32.store8
      i32.const 4 i32.const 1024 i32.store i32.const 8 i32.const 11 i32.store i32.const 0"""
    with pytest.raises(ProcessorFailure) as raised:
        make_processor(runtime, guest(init=init, strings={"error": "bad\r\nforged"}))
    assert raised.value.detail == "bad\\x0d\\x0aforged"


async def test_a_guest_log_flood_is_cut_without_failing_the_request(runtime, caplog):
    flood = """(loop $more
        i32.const 2 {s:msg} call $log
        global.get $left i32.const 1 i32.sub global.set $left global.get $left br_if $more)
      i32.const 0"""
    wasm = guest(request_headers=flood, strings={"msg": "hello"}, extra="(global $left (mut i32) (i32.const 1000))")
    processor = make_processor(runtime, wasm)
    with caplog.at_level("INFO", logger="wasmgate.guest"):
        driven = await drive(runtime, [processor])
    assert driven.status == 200
    assert len([r for r in caplog.records if r.name == "wasmgate.guest"]) == 100
