"""Shared state for processors: counters and key-value, on the memory backend and a real Redis."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import sqlite3
import struct
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator

import pytest
import redis

from wasmgate.config import ConfigError, StateBackendKind, StateConfig
from wasmgate.state import MemoryState, Quota, QuotaExceeded, State, open_state

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
        with redis.Redis.from_url(url) as client:
            client.flushdb()  # each test starts from nothing, as on the memory backend
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


# -- quotas and expiry --------------------------------------------------------------------


async def test_a_write_past_the_key_quota_is_refused_and_changes_nothing(state):
    quota = Quota(keys=2, bytes=2**20)
    await state.kv_set(key("a"), b"1", 0, 5.0, quota)
    await state.counter_add(key("b"), 1, 60_000, None, 5.0, quota)  # a counter is a key too
    with pytest.raises(QuotaExceeded, match="quota"):
        await state.kv_set(key("c"), b"1", 0, 5.0, quota)
    assert await state.kv_get(key("c"), 5.0) is None
    await state.kv_set(key("a"), b"2", 0, 5.0, quota)  # replacing a key adds none
    assert await state.kv_get(key("a"), 5.0) == b"2"


async def test_a_write_past_the_byte_quota_is_refused(state):
    quota = Quota(keys=100, bytes=len(key("a")) + 1000)
    await state.kv_set(key("a"), b"x" * 1000, 0, 5.0, quota)
    with pytest.raises(QuotaExceeded):
        await state.kv_set(key("a"), b"x" * 1001, 0, 5.0, quota)
    await state.kv_set(key("a"), b"x" * 10, 0, 5.0, quota)  # smaller is always allowed
    assert await state.kv_get(key("a"), 5.0) == b"x" * 10


async def test_a_new_counter_past_the_quota_is_refused(state):
    quota = Quota(keys=1, bytes=2**20)
    await state.counter_add(key("a"), 1, 60_000, None, 5.0, quota)
    await state.counter_add(key("a"), 1, 60_000, None, 5.0, quota)  # the same counter again
    with pytest.raises(QuotaExceeded):
        await state.counter_add(key("b"), 1, 60_000, None, 5.0, quota)


async def test_deleted_and_expired_entries_give_their_quota_back(state):
    quota = Quota(keys=2, bytes=2**20)
    await state.kv_set(key("a"), b"1", 0, 5.0, quota)
    await state.kv_set(key("b"), b"1", 100, 5.0, quota)
    await state.kv_delete(key("a"), 5.0)
    await state.kv_set(key("c"), b"1", 0, 5.0, quota)
    await asyncio.sleep(0.2)  # b's TTL is over
    await state.kv_set(key("d"), b"1", 0, 5.0, quota)
    assert [await state.kv_get(key(name), 5.0) for name in "abcd"] == [None, None, b"1", b"1"]


async def test_each_processor_has_its_own_quota(state):
    quota = Quota(keys=1, bytes=2**20)
    await state.kv_set(key("a", processor="full"), b"1", 0, 5.0, quota)
    with pytest.raises(QuotaExceeded):
        await state.kv_set(key("b", processor="full"), b"1", 0, 5.0, quota)
    await state.kv_set(key("b", processor="other"), b"1", 0, 5.0, quota)


async def test_expired_rows_leave_the_memory_database_as_writes_go_by():
    memory = MemoryState.create()
    try:
        for i in range(200):
            await memory.kv_set(key(f"short-{i}"), b"x" * 100, 10, 5.0, ROOMY)
            await memory.counter_add(key(f"window-{i}"), 1, 10, None, 5.0, ROOMY)
        await asyncio.sleep(0.05)
        for _ in range(4):  # a batch of each table's expired rows per write
            await memory.kv_set(key("kept"), b"x", 0, 5.0, ROOMY)
        with sqlite3.connect(memory.path) as db:
            counts = [db.execute(f"SELECT count(*) FROM {table}").fetchone()[0] for table in ("kv", "counters")]
            usage = db.execute("SELECT keys, bytes FROM usage").fetchall()
        assert counts == [1, 0]
        assert usage == [(1, len(key("kept")) + 1)]
    finally:
        memory.remove()


async def test_a_guest_past_its_state_quota_fails_with_state_quota(runtime, state):
    setting = guest(
        phases=1, request_headers="{s:key} {s:key} i32.const 0 call $kv-set i32.const 0", strings={"key": "k"}
    )
    first = make_processor(runtime, setting, name="quota-owner", state=state, state_quota={"keys": 1})
    assert (await drive(runtime, [first])).status == 200
    other = guest(
        phases=1, request_headers="{s:key} {s:key} i32.const 0 call $kv-set i32.const 0", strings={"key": "j"}
    )
    second = make_processor(runtime, other, name="quota-owner", state=state, state_quota={"keys": 1})
    driven = await drive(runtime, [second])
    assert (driven.status, json.loads(driven.body)["error"]["cause"]) == (503, "state_quota")


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


ROOMY = Quota(keys=10**6, bytes=2**30)


def key(name: str, processor: str = "p") -> bytes:
    """A key as the core makes it: tenant, processor, the guest's key."""
    return f"tenant\0{processor}\0{name}".encode()


async def add_300(state: MemoryState) -> None:
    for _ in range(300):
        await state.counter_add(key("shared"), 1, 60_000, None, 5.0, ROOMY)


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
        assert (await memory.counter_add(key("shared"), 0, 60_000, None, 5.0, ROOMY)).value == 900
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


async def test_a_memory_database_of_the_earlier_layout_is_migrated_with_its_rows(tmp_path):
    path = tmp_path / "state.sqlite"
    with sqlite3.connect(path) as db:  # as the gateway before quotas made it
        db.execute("CREATE TABLE counters (key BLOB PRIMARY KEY, value INTEGER, window_end INTEGER)")
        db.execute("CREATE TABLE kv (key BLOB PRIMARY KEY, value BLOB, expires INTEGER)")
        db.execute("INSERT INTO counters VALUES (?, 7, ?)", (key("c"), 2**62))
        db.execute("INSERT INTO kv VALUES (?, ?, 0)", (key("k"), b"kept"))
    memory = MemoryState(path)
    try:
        assert await memory.kv_get(key("k"), 5.0) == b"kept"
        assert (await memory.counter_add(key("c"), 1, 60_000, None, 5.0, ROOMY)).value == 8
        with pytest.raises(QuotaExceeded):  # both rows count against the quota
            await memory.kv_set(key("new"), b"x", 0, 5.0, Quota(keys=2, bytes=2**20))
    finally:
        await memory.close()
    assert MemoryState(path)  # opened again: already migrated


async def test_the_memory_backends_usage_stays_true_when_an_expired_key_is_overwritten_at_its_quota():
    memory = MemoryState.create()
    try:
        others = [key(f"other-{i}") for i in range(200)]
        small = max(len(other) for other in others) + 1
        quota = Quota(keys=1000, bytes=1000 + sum(len(other) + 1 for other in others) + len(key("k")) + 10)
        await memory.kv_set(key("fill"), b"x" * (1000 - len(key("fill"))), 0, 5.0, quota)
        for other in others:  # they expire first, so a write's batch purge takes them before k
            await memory.kv_set(other, b"x", 20, 5.0, quota)
        await memory.kv_set(key("k"), b"x" * 10, 40, 5.0, quota)
        await asyncio.sleep(0.1)
        await memory.kv_set(key("k"), b"x" * 100 * small, 0, 5.0, quota)  # over until every expired row goes
        with sqlite3.connect(memory.path) as db:
            held = db.execute("SELECT count(*), sum(size) FROM kv").fetchone()
            usage = db.execute("SELECT keys, bytes FROM usage").fetchone()
        assert usage == held
    finally:
        memory.remove()
