"""State processors share: windowed counters and a key-value store.

Two backends, chosen by the gateway config's ``state.backend``, both called
on the event loop (no thread waits on them):

``memory`` (the default): a SQLite database in shared memory
(``/dev/shm``), created by the process that starts the gateway and opened
by each of its worker processes. It is the single source of truth for all
of them: every counter update is one SQLite write transaction, which the
database's lock makes atomic across processes, with no server to run. A
worker that dies loses nothing. A transaction takes tens of microseconds;
while another process holds the lock, the call waits for it without
blocking the loop. It is not shared between gateways: for several replicas
behind a load balancer, use ``redis``.

``redis``: a Redis server, through redis-py's asyncio client. Counter updates
run as one Lua script on the server, so they are atomic across every
replica; a connection pool per worker. An unreachable server is reported
when the gateway starts.

Counters live in fixed windows from their first add. A ``limit`` makes an
add conditional: it happens only if the value stays at or under the limit.
Keys arrive already namespaced (by the core). Each call is bounded by the
``timeout`` its caller gives (what is left of the phase) and by ``state.timeout``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar, cast

import redis
import redis.asyncio
from redis.commands.core import AsyncScript

from .config import ConfigError, StateBackendKind, StateConfig

T = TypeVar("T")


class StateUnavailable(Exception):
    """The backend did not answer, or failed; the message says which and why."""


COUNTER_RANGE = 2**53
"""Counters hold integers of magnitude below this on every backend (Redis computes in Lua's doubles)."""


class CounterOutOfRange(Exception):
    """An add would take a counter out of ``COUNTER_RANGE``: it is not made."""


@dataclass(frozen=True, slots=True)
class Counter:
    value: int
    reset_ms: int
    applied: bool


class State(Protocol):
    async def counter_add(self, key: bytes, delta: int, window_ms: int, limit: int | None, timeout: float) -> Counter:
        """Adds ``delta`` to a counter (only if it stays within ``limit``), within ``timeout`` seconds."""

    async def kv_get(self, key: bytes, timeout: float) -> bytes | None: ...
    async def kv_set(self, key: bytes, value: bytes, ttl_ms: int, timeout: float) -> None: ...
    async def kv_delete(self, key: bytes, timeout: float) -> None: ...
    async def close(self) -> None:
        """Lets go of connections; what is stored stays."""


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


LOCK_RETRY = (0.0001, 0.002)
"""While another process holds the database's lock: the first wait, and the longest."""


class MemoryState:
    """The ``memory`` backend: one SQLite file in shared memory for every worker of a gateway."""

    def __init__(self, path: Path) -> None:
        self.path = path
        # One connection, used only from the event loop of the process, never from two threads at once.
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA busy_timeout=0")  # a locked database is waited for here, without blocking
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=OFF")  # shared memory: nothing to make durable
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS counters (key BLOB PRIMARY KEY, value INTEGER, window_end INTEGER)"
        )
        self._db.execute("CREATE TABLE IF NOT EXISTS kv (key BLOB PRIMARY KEY, value BLOB, expires INTEGER)")

    @classmethod
    def create(cls) -> MemoryState:
        """A new database, in shared memory where there is some."""
        directory = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path("/tmp")
        path = directory / f"wasmgate-state-{uuid.uuid4().hex}.sqlite"
        # This user's only (SQLite gives its journal files the same mode); a name nobody holds yet.
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        return cls(path)

    async def close(self) -> None:
        self._db.close()

    def remove(self) -> None:
        """Closes the database and deletes it."""
        self._db.close()
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(f"{self.path}{suffix}").unlink(missing_ok=True)

    async def _transaction(self, timeout: float, work: Callable[[sqlite3.Connection], T]) -> T:
        """``work`` in one write transaction: atomic across every process of the gateway."""
        deadline = time.monotonic() + timeout
        wait, longest = LOCK_RETRY
        try:
            while True:
                try:
                    self._db.execute("BEGIN IMMEDIATE")  # the write lock first: read-modify-write is atomic
                    break
                except sqlite3.OperationalError as error:
                    if error.sqlite_errorcode != sqlite3.SQLITE_BUSY or time.monotonic() + wait > deadline:
                        raise
                await asyncio.sleep(wait)
                wait = min(2 * wait, longest)
            try:
                result = work(self._db)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
            return result
        except sqlite3.Error as error:
            raise StateUnavailable(f"memory state ({self.path}): {error}") from None

    async def counter_add(self, key: bytes, delta: int, window_ms: int, limit: int | None, timeout: float) -> Counter:
        now = _now_ms()

        def add(db: sqlite3.Connection) -> Counter:
            row = db.execute("SELECT value, window_end FROM counters WHERE key = ?", (key,)).fetchone()
            value, window_end = (row[0], row[1]) if row is not None and row[1] > now else (0, now + window_ms)
            new = value + delta
            if abs(new) >= COUNTER_RANGE:
                raise CounterOutOfRange(f"{value} + {delta} is out of a counter's range (±2^53)")
            applied = limit is None or new <= limit
            if applied:
                db.execute("INSERT OR REPLACE INTO counters VALUES (?, ?, ?)", (key, new, window_end))
            return Counter(new if applied else value, window_end - now, applied)

        return await self._transaction(timeout, add)

    async def kv_get(self, key: bytes, timeout: float) -> bytes | None:
        row = await self._transaction(
            timeout, lambda db: db.execute("SELECT value, expires FROM kv WHERE key = ?", (key,)).fetchone()
        )
        if row is None or (row[1] and row[1] <= _now_ms()):
            return None
        return cast(bytes, row[0])

    async def kv_set(self, key: bytes, value: bytes, ttl_ms: int, timeout: float) -> None:
        expires = _now_ms() + ttl_ms if ttl_ms else 0
        await self._transaction(
            timeout, lambda db: db.execute("INSERT OR REPLACE INTO kv VALUES (?, ?, ?)", (key, value, expires))
        )

    async def kv_delete(self, key: bytes, timeout: float) -> None:
        await self._transaction(timeout, lambda db: db.execute("DELETE FROM kv WHERE key = ?", (key,)))


_COUNTER_ADD = """
local value = tonumber(redis.call('GET', KEYS[1]) or '0')
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then
  value = 0
  ttl = tonumber(ARGV[2])
end
local new = value + tonumber(ARGV[1])
if new >= 9007199254740992 or new <= -9007199254740992 then
  return {value, ttl, 2}
end
if ARGV[3] ~= '' and new > tonumber(ARGV[3]) then
  return {value, ttl, 0}
end
redis.call('SET', KEYS[1], new, 'PX', ttl)
return {new, ttl, 1}
"""


class RedisState:
    """The ``redis`` backend: one Redis for every replica; counters updated by a Lua script on the server."""

    CONNECTIONS = 16
    """Connections a worker keeps at most: more calls at once wait for one, bounded by their deadline."""

    def __init__(self, url: str, timeout: float) -> None:
        self._url = url
        self._timeout = timeout
        # Made on first use, on the event loop that uses it: asyncio connections belong to one loop.
        self._client: redis.asyncio.Redis | None = None
        self._counter: AsyncScript | None = None  # loaded into the server when it lacks it

    def check(self) -> None:
        """Raises ``ConfigError`` if the server cannot be reached: at start, not at the first request."""
        try:
            with redis.Redis.from_url(self._url, socket_connect_timeout=self._timeout) as probe:
                probe.ping()
        except redis.RedisError as error:
            raise ConfigError("config", [f"state.url: cannot reach Redis at {self._url}: {error}"]) from None

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = self._counter = None

    def _redis(self) -> redis.asyncio.Redis:
        if self._client is None:
            pool = redis.asyncio.BlockingConnectionPool.from_url(
                self._url,
                max_connections=self.CONNECTIONS,
                timeout=None,  # a call waits for a connection as long as its caller lets it
                socket_connect_timeout=self._timeout,
                socket_timeout=self._timeout,
                driver_info=None,  # a new connection is one TCP connect, not two more round trips (CLIENT SETINFO)
            )
            self._client = redis.asyncio.Redis.from_pool(pool)
            self._counter = self._client.register_script(_COUNTER_ADD)
        return self._client

    @contextlib.asynccontextmanager
    async def _call(self) -> AsyncIterator[redis.asyncio.Redis]:
        try:
            yield self._redis()
        except redis.RedisError as error:
            raise StateUnavailable(f"redis state ({self._url}): {error}") from None

    async def counter_add(self, key: bytes, delta: int, window_ms: int, limit: int | None, timeout: float) -> Counter:
        args = [delta, window_ms, "" if limit is None else limit]
        async with self._call():
            assert self._counter is not None, "made with the client"
            value, ttl, applied = await self._counter(keys=[b"c:" + key], args=args)
        if applied == 2:  # the script's mark for an add out of range
            raise CounterOutOfRange(f"{value} + {delta} is out of a counter's range (±2^53)")
        return Counter(int(value), int(ttl), bool(applied))

    async def kv_get(self, key: bytes, timeout: float) -> bytes | None:
        async with self._call() as client:
            return cast("bytes | None", await client.get(b"k:" + key))  # responses are not decoded

    async def kv_set(self, key: bytes, value: bytes, ttl_ms: int, timeout: float) -> None:
        async with self._call() as client:
            await client.set(b"k:" + key, value, px=ttl_ms or None)

    async def kv_delete(self, key: bytes, timeout: float) -> None:
        async with self._call() as client:
            await client.delete(b"k:" + key)


def open_state(config: StateConfig) -> State:
    """The configured backend, checked. A memory database is made when the config names none:
    the caller that made it removes it (``MemoryState.remove``)."""
    if config.backend is StateBackendKind.REDIS:
        state = RedisState(config.url, config.timeout)
        state.check()
        return state
    if config.path is None:
        return MemoryState.create()
    try:
        return MemoryState(config.path)
    except sqlite3.Error as error:
        raise ConfigError("config", [f"state.path: cannot use {config.path}: {error}"]) from None
