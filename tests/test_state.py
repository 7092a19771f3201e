"""Shared state for processors: counters and key-value, on the memory backend and a real Redis."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import struct
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator

import pytest
import redis

from wasmgate.config import ConfigError, StateBackendKind, StateConfig
from wasmgate.state import MemoryState, State, open_state

from .conftest import ROOT, drive, free_port, make_processor
from .wat import guest


class RedisServer:
    """``redis-server`` on a loopback port, nothing written to disk."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is needed: apt-get install redis-server (.ci/run installs it)")
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._command = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(self._command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.05)
        pytest.fail("redis-server did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture(params=["memory", "redis"])
async def state(request: pytest.FixtureRequest) -> AsyncIterator[State]:
    if request.param == "memory":
        memory = MemoryState.create()
        yield memory
        memory.remove()
    else:
        url = request.getfixturevalue("redis_server").url
        redis_state = open_state(StateConfig(backend=StateBackendKind.REDIS, url=url))
        yield redis_state
        await redis_state.close()


def counting(
    key: str = "hits", delta: int = 1, window_ms: int = 60_000, limit: int | None = None, result_at: int = 256
) -> bytes:
    """A guest that adds to a counter in request_headers and answers with the counter, as WIT lays it out."""
    return guest(
        phases=1,
        request_headers=f"""
            {{s:key}} i64.const {delta} i32.const {window_ms} i32.const {int(limit is not None)} i64.const {limit or 0}
            i32.const {result_at} call $counter-add
            i32.const 200 i32.const 0 i32.const 0 i32.const 256 i32.const 16 call $send-response
            i32.const 1""",
        strings={"key": key},
    )


async def add(runtime, processor) -> tuple[int, int, bool]:
    driven = await drive(runtime, [processor])
    assert driven.status == 200, driven.body
    value, reset_ms, applied = struct.unpack("<qIB3x", driven.body)
    return value, reset_ms, bool(applied)


async def test_a_counter_adds_up_within_its_window(runtime, state):
    processor = make_processor(runtime, counting(delta=5), state=state)
    seen = [await add(runtime, processor) for _ in range(3)]
    assert [value for value, _, _ in seen] == [5, 10, 15]
    assert all(0 < reset_ms <= 60_000 and applied for _, reset_ms, applied in seen)


async def test_a_limit_refuses_an_add_that_would_pass_it(runtime, state):
    processor = make_processor(runtime, counting(delta=4, limit=10), state=state)
    seen = [await add(runtime, processor) for _ in range(3)]
    assert [(value, applied) for value, _, applied in seen] == [(4, True), (8, True), (8, False)]


async def test_concurrent_adds_never_take_a_counter_past_its_limit(runtime, state):
    # Fifty phases at once wait on one backend: their (wall-clock) deadlines are sized for it.
    processor = make_processor(runtime, counting(limit=20), state=state, timeouts={"request_headers": "5s"})
    results = await asyncio.gather(*(add(runtime, processor) for _ in range(50)))
    assert sum(applied for _, _, applied in results) == 20
    assert max(value for value, _, _ in results) == 20


async def test_a_counter_starts_again_when_its_window_ends(runtime, state):
    processor = make_processor(runtime, counting(window_ms=200), state=state)
    assert (await add(runtime, processor))[0] == 1
    assert (await add(runtime, processor))[0] == 2
    await asyncio.sleep(0.3)
    assert (await add(runtime, processor))[0] == 1


async def test_an_add_past_a_counters_range_is_an_abi_violation_and_changes_nothing(runtime, state):
    big = 2**52
    processor = make_processor(runtime, counting(delta=big), name="overflowing", state=state)
    assert (await add(runtime, processor))[0] == big
    driven = await drive(runtime, [processor])  # 2^53: out of range
    error = json.loads(driven.body)["error"]
    assert (error["cause"], error["message"]) == (
        "abi_violation",
        f"counter-add: {big} + {big} is out of a counter's range (±2^53)",
    )
    check = make_processor(runtime, counting(delta=0), name="overflowing", state=state)
    assert (await add(runtime, check))[0] == big


async def test_an_add_whose_result_cannot_be_written_is_an_abi_violation_and_changes_nothing(runtime, state):
    bad = make_processor(runtime, counting(result_at=0x7FFFFFF8), name="bad-pointer", state=state)
    error = json.loads((await drive(runtime, [bad])).body)["error"]
    assert error["cause"] == "abi_violation"
    assert "counter-add's result" in error["message"]
    check = make_processor(runtime, counting(delta=0), name="bad-pointer", state=state)
    assert (await add(runtime, check))[0] == 0


async def test_processors_never_share_keys(runtime, state):
    first = make_processor(runtime, counting(), state=state)
    second = make_processor(runtime, counting(), state=state)
    await add(runtime, first)
    await add(runtime, first)
    assert (await add(runtime, second))[0] == 1


def kv(op: str, ttl_ms: int = 0) -> bytes:
    """A guest that sets, deletes or gets key "k" (answering 200 with the value, or 404)."""
    hooks = {
        "set": f"{{s:key}} {{s:value}} i32.const {ttl_ms} call $kv-set i32.const 0",
        "delete": "{s:key} call $kv-delete i32.const 0",
        "get": """
            {s:key} i32.const 256 call $kv-get
            i32.const 256 i32.load8_u
            if (result i32)
              i32.const 200 i32.const 0 i32.const 0 i32.const 260 i32.load i32.const 264 i32.load call $send-response
              i32.const 1
            else
              i32.const 404 i32.const 0 i32.const 0 i32.const 0 i32.const 0 call $send-response
              i32.const 1
            end""",
    }
    return guest(phases=1, request_headers=hooks[op], strings={"key": "k", "value": "stored"})


async def test_the_key_value_store_sets_gets_expires_and_deletes(runtime, state):
    name = "kv-owner"  # the same processor name for every guest: the same namespace

    async def run(op: str, ttl_ms: int = 0) -> tuple[int, bytes]:
        driven = await drive(runtime, [make_processor(runtime, kv(op, ttl_ms), name=name, state=state)])
        return driven.status, driven.body

    assert (await run("get"))[0] == 404
    await run("set")
    assert await run("get") == (200, b"stored")
    await run("delete")
    assert (await run("get"))[0] == 404
    await run("set", ttl_ms=150)
    assert (await run("get"))[0] == 200
    await asyncio.sleep(0.3)
    assert (await run("get"))[0] == 404


async def test_a_state_call_without_a_backend_fails_with_state_unavailable(runtime):
    processor = make_processor(runtime, counting())
    driven = await drive(runtime, [processor])
    assert json.loads(driven.body)["error"]["cause"] == "state_unavailable"


async def test_redis_going_away_fails_by_the_failure_mode_and_recovers(runtime):
    server = RedisServer()
    server.start()
    state = open_state(StateConfig(backend=StateBackendKind.REDIS, url=server.url, timeout="200ms"))
    closed = make_processor(runtime, counting(), state=state)
    opened = make_processor(runtime, counting(), state=state, failure_mode="fail_open")
    try:
        assert (await add(runtime, closed))[0] == 1
        server.stop()
        down = await drive(runtime, [closed])
        assert (down.status, json.loads(down.body)["error"]["cause"]) == (503, "state_unavailable")
        assert (await drive(runtime, [opened])).reached_upstream
        server.start()
        assert (await add(runtime, closed))[0] == 1  # a new server: the count starts again
    finally:
        await state.close()
        server.stop()


async def test_a_redis_that_lost_its_scripts_loads_the_counter_script_again(runtime, redis_server):
    state = open_state(StateConfig(backend=StateBackendKind.REDIS, url=redis_server.url))
    processor = make_processor(runtime, counting("flushed"), state=state)
    try:
        first = (await add(runtime, processor))[0]
        with redis.Redis.from_url(redis_server.url) as admin:
            admin.script_flush()
        assert (await add(runtime, processor))[0] == first + 1
    finally:
        await state.close()


def test_an_unreachable_redis_is_a_clear_error_at_start():
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        url = f"redis://127.0.0.1:{unused.getsockname()[1]}/0"
    with pytest.raises(ConfigError) as raised:
        open_state(StateConfig(backend=StateBackendKind.REDIS, url=url))
    assert raised.value.problems[0].startswith(f"state.url: cannot reach Redis at {url}")


async def add_300(state: MemoryState) -> None:
    for _ in range(300):
        await state.counter_add(b"shared", 1, 60_000, None, 5.0)


async def test_the_memory_backend_is_one_source_of_truth_for_several_processes():
    memory = MemoryState.create()
    script = f"""
import asyncio
from pathlib import Path
from tests.test_state import add_300
from wasmgate.state import MemoryState
asyncio.run(add_300(MemoryState(Path({str(memory.path)!r}))))
"""
    try:
        workers = [subprocess.Popen([sys.executable, "-c", script], cwd=ROOT) for _ in range(2)]
        await add_300(memory)
        assert [await asyncio.to_thread(worker.wait, 60) for worker in workers] == [0, 0]
        assert (await memory.counter_add(b"shared", 0, 60_000, None, 5.0)).value == 900
    finally:
        memory.remove()


class BrokenState(MemoryState):
    """A backend with a bug: its reads raise what no backend should."""

    async def kv_get(self, key: bytes, timeout: float) -> bytes | None:
        raise KeyError(key)


async def test_a_state_backends_bug_fails_the_call_with_host_error_and_is_logged(runtime, caplog):
    broken = BrokenState.create()
    try:
        driven = await drive(runtime, [make_processor(runtime, kv("get"), state=broken)])
    finally:
        broken.remove()
    assert (driven.status, json.loads(driven.body)["error"]["cause"]) == (503, "host_error")
    assert [record.exc_info is not None for record in caplog.records if record.name == "wasmgate.sandbox"] == [True]


def test_the_memory_database_is_readable_by_its_user_only():
    made = MemoryState.create()
    try:
        assert made.path.stat().st_mode & 0o777 == 0o600
    finally:
        made.remove()
