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
Keys arrive already namespaced (by the core): tenant, processor, key. Each
call is bounded by the ``timeout`` its caller gives (what is left of the
phase) and by ``state.timeout``.

Each namespace has a ``Quota`` of keys and bytes (a key's bytes and its
value's; a counter is its key and 16 bytes): a write that would pass it
raises ``QuotaExceeded`` and changes nothing. Rows past their TTL or window
are deleted as writes go by, a batch at a time, and all of a namespace's
when it meets its quota, so neither backend keeps what has expired.
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
class Quota:
    """What one namespace (a processor, for one tenant) may hold."""

    keys: int
    bytes: int


class QuotaExceeded(Exception):
    """A write would take its namespace past its quota: it is not made."""


COUNTER_BYTES = 16
"""What a counter's value and window count for, beside its key."""

PURGE_BATCH = 64
"""Expired rows deleted by each write, at most; the namespace's all, when it is at its quota."""


def namespace_of(key: bytes) -> bytes:
    """The ``tenant\\0processor\\0`` prefix the core gives every key (neither name holds a NUL)."""
    return key[: key.index(b"\0", key.index(b"\0") + 1) + 1]


def _over(quota: Quota, keys: int, size: int) -> str | None:
    if keys > quota.keys:
        return f"{keys} keys, over its quota of {quota.keys}"
    if size > quota.bytes:
        return f"{size} bytes, over its quota of {quota.bytes}"
    return None


@dataclass(frozen=True, slots=True)
class Counter:
    value: int
    reset_ms: int
    applied: bool


class State(Protocol):
    async def counter_add(
        self, key: bytes, delta: int, window_ms: int, limit: int | None, timeout: float, quota: Quota
    ) -> Counter:
        """Adds ``delta`` to a counter (only if it stays within ``limit``), within ``timeout`` seconds."""

    async def kv_get(self, key: bytes, timeout: float) -> bytes | None: ...
    async def kv_set(self, key: bytes, value: bytes, ttl_ms: int, timeout: float, quota: Quota) -> None: ...
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
        self._db.execute("PRAGMA busy_timeout=10000")  # opening (off the event loop) may wait for the lock
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=OFF")  # shared memory: nothing to make durable
        if self._db.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:
            self._db.execute("BEGIN IMMEDIATE")  # every worker opens it at once: one makes or migrates it
            try:
                if self._db.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:
                    _migrate(self._db)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        self._db.execute("PRAGMA busy_timeout=0")  # from now on a locked database is waited for without blocking

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

    async def counter_add(
        self, key: bytes, delta: int, window_ms: int, limit: int | None, timeout: float, quota: Quota
    ) -> Counter:
        now = _now_ms()

        def add(db: sqlite3.Connection) -> Counter:
            _purge(db, now)
            row = db.execute("SELECT value, window_end FROM counters WHERE key = ?", (key,)).fetchone()
            value, window_end = (row[0], row[1]) if row is not None and row[1] > now else (0, now + window_ms)
            new = value + delta
            if abs(new) >= COUNTER_RANGE:
                raise CounterOutOfRange(f"{value} + {delta} is out of a counter's range (±2^53)")
            applied = limit is None or new <= limit
            if applied:
                size = len(key) + COUNTER_BYTES
                if row is None:
                    _charge(db, now, namespace_of(key), 1, size, quota)
                namespace = namespace_of(key)
                db.execute(
                    "INSERT OR REPLACE INTO counters VALUES (?, ?, ?, ?, ?)", (key, new, window_end, namespace, size)
                )
            return Counter(new if applied else value, window_end - now, applied)

        return await self._transaction(timeout, add)

    async def kv_get(self, key: bytes, timeout: float) -> bytes | None:
        row = await self._transaction(
            timeout, lambda db: db.execute("SELECT value, expires FROM kv WHERE key = ?", (key,)).fetchone()
        )
        if row is None or (row[1] and row[1] <= _now_ms()):
            return None
        return cast(bytes, row[0])

    async def kv_set(self, key: bytes, value: bytes, ttl_ms: int, timeout: float, quota: Quota) -> None:
        now = _now_ms()
        expires = now + ttl_ms if ttl_ms else 0
        namespace, size = namespace_of(key), len(key) + len(value)

        def put(db: sqlite3.Connection) -> None:
            _purge(db, now)
            # This key's own expired row goes first: the namespace's purge in _charge must not release it unseen.
            gone = db.execute(
                "DELETE FROM kv WHERE key = ? AND expires > 0 AND expires <= ? RETURNING size", (key, now)
            ).fetchone()
            if gone is not None:
                _release(db, namespace, 1, gone[0])
            row = db.execute("SELECT size FROM kv WHERE key = ?", (key,)).fetchone()
            _charge(db, now, namespace, 0 if row else 1, size - (row[0] if row else 0), quota)
            db.execute("INSERT OR REPLACE INTO kv VALUES (?, ?, ?, ?, ?)", (key, value, expires, namespace, size))

        await self._transaction(timeout, put)

    async def kv_delete(self, key: bytes, timeout: float) -> None:
        def delete(db: sqlite3.Connection) -> None:
            row = db.execute("DELETE FROM kv WHERE key = ? RETURNING namespace, size", (key,)).fetchone()
            if row is not None:
                _release(db, row[0], 1, row[1])

        await self._transaction(timeout, delete)


SCHEMA_VERSION = 2
"""1: rows only; 2: rows with their namespace and size, and each namespace's usage."""


def _migrate(db: sqlite3.Connection) -> None:
    """Brings a database made by an earlier version up to ``SCHEMA_VERSION``, keeping its rows."""
    tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    old: dict[str, list[tuple[bytes, object, int]]] = {}
    for table in ("kv", "counters") if "usage" not in tables else ():
        if table in tables:
            old[table] = db.execute(f"SELECT * FROM {table}").fetchall()
            db.execute(f"DROP TABLE {table}")
    for statement in _SCHEMA.split(";"):  # not executescript: it would commit the transaction
        if statement.strip():
            db.execute(statement)
    for table, rows in old.items():
        for key, value, ends in rows:
            size = len(key) + (len(value) if isinstance(value, bytes) else COUNTER_BYTES)
            namespace = namespace_of(key)
            db.execute(f"INSERT INTO {table} VALUES (?, ?, ?, ?, ?)", (key, value, ends, namespace, size))
            db.execute(
                "INSERT INTO usage VALUES (?, 1, ?) ON CONFLICT (namespace) DO UPDATE"
                " SET keys = keys + 1, bytes = bytes + excluded.bytes",
                (namespace, size),
            )
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


_SCHEMA = """
CREATE TABLE IF NOT EXISTS counters (
    key BLOB PRIMARY KEY, value INTEGER, window_end INTEGER, namespace BLOB NOT NULL, size INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS counters_ending ON counters (window_end);
CREATE INDEX IF NOT EXISTS counters_by_namespace ON counters (namespace, window_end);
CREATE TABLE IF NOT EXISTS kv (
    key BLOB PRIMARY KEY, value BLOB, expires INTEGER, namespace BLOB NOT NULL, size INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS kv_expiring ON kv (expires) WHERE expires > 0;
CREATE INDEX IF NOT EXISTS kv_by_namespace ON kv (namespace, expires);
CREATE TABLE IF NOT EXISTS usage (namespace BLOB PRIMARY KEY, keys INTEGER NOT NULL, bytes INTEGER NOT NULL);
"""
"""The memory backend's tables: the rows, and what each namespace holds (kept as rows come and go)."""

_EXPIRED = {
    "kv": "expires > 0 AND expires <= ?",
    "counters": "window_end <= ?",
}


def _purge(db: sqlite3.Connection, now: int, namespace: bytes | None = None) -> None:
    """Deletes expired rows: a batch of any namespace's, or all of ``namespace``'s."""
    for table, expired in _EXPIRED.items():
        if namespace is None:
            query = f"DELETE FROM {table} WHERE key IN (SELECT key FROM {table} WHERE {expired} LIMIT {PURGE_BATCH})"
            rows = db.execute(f"{query} RETURNING namespace, size", (now,)).fetchall()
        else:
            query = f"DELETE FROM {table} WHERE namespace = ? AND {expired} RETURNING namespace, size"
            rows = db.execute(query, (namespace, now)).fetchall()
        for gone, size in rows:
            _release(db, gone, 1, size)


def _release(db: sqlite3.Connection, namespace: bytes, keys: int, size: int) -> None:
    db.execute("UPDATE usage SET keys = keys - ?, bytes = bytes - ? WHERE namespace = ?", (keys, size, namespace))


def _charge(db: sqlite3.Connection, now: int, namespace: bytes, keys: int, size: int, quota: Quota) -> None:
    """Counts ``keys`` and ``size`` more to ``namespace``; ``QuotaExceeded`` when that passes its quota even once
    its expired rows are gone."""
    row = db.execute("SELECT keys, bytes FROM usage WHERE namespace = ?", (namespace,)).fetchone() or (0, 0)
    if (keys > 0 or size > 0) and _over(quota, row[0] + keys, row[1] + size):
        _purge(db, now, namespace)
        row = db.execute("SELECT keys, bytes FROM usage WHERE namespace = ?", (namespace,)).fetchone() or (0, 0)
        if problem := _over(quota, row[0] + keys, row[1] + size):
            raise QuotaExceeded(f"the processor's state would hold {problem}")
    db.execute("INSERT OR REPLACE INTO usage VALUES (?, ?, ?)", (namespace, row[0] + keys, row[1] + size))


# Both scripts keep a namespace's ledger beside its rows: KEYS[2] a sorted set of its keys by expiry (ms;
# +inf for none), KEYS[3] a hash of each key's size, KEYS[4] its total bytes. Each first deletes a batch of
# the namespace's expired entries from the ledger (Redis expired the keys themselves), and all of them when
# the write would pass the quota. ARGV[1..3] are now, the quota's keys and bytes; the result's last element
# is 3 when the quota refused the write.
_LEDGER = (
    """
local function purge(limit)
  local dead = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1], 'LIMIT', 0, limit)
  for _, key in ipairs(dead) do
    redis.call('DECRBY', KEYS[4], tonumber(redis.call('HGET', KEYS[3], key) or '0'))
    redis.call('HDEL', KEYS[3], key)
    redis.call('ZREM', KEYS[2], key)
  end
end
local function charge(size, expires)
  local old = tonumber(redis.call('HGET', KEYS[3], KEYS[1]) or '-1')
  local function over()
    local keys = redis.call('ZCARD', KEYS[2]) + (old < 0 and 1 or 0)
    local bytes = tonumber(redis.call('GET', KEYS[4]) or '0') + size - math.max(old, 0)
    return (old < 0 or size > old) and (keys > tonumber(ARGV[2]) or bytes > tonumber(ARGV[3]))
  end
  if over() then
    purge(-1)
    old = tonumber(redis.call('HGET', KEYS[3], KEYS[1]) or '-1')
    if over() then return false end
  end
  redis.call('INCRBY', KEYS[4], size - math.max(old, 0))
  redis.call('HSET', KEYS[3], KEYS[1], size)
  redis.call('ZADD', KEYS[2], expires, KEYS[1])
  return true
end
purge("""
    + str(PURGE_BATCH)
    + """)
"""
)

_COUNTER_ADD = (
    _LEDGER
    + """
local value = tonumber(redis.call('GET', KEYS[1]) or '0')
local ttl = redis.call('PTTL', KEYS[1])
local fresh = ttl < 0
if fresh then
  value = 0
  ttl = tonumber(ARGV[5])
end
local new = value + tonumber(ARGV[4])
if new >= 9007199254740992 or new <= -9007199254740992 then
  return {value, ttl, 2}
end
if ARGV[6] ~= '' and new > tonumber(ARGV[6]) then
  return {value, ttl, 0}
end
if fresh and not charge(tonumber(ARGV[7]), tonumber(ARGV[1]) + ttl) then
  return {value, ttl, 3}
end
redis.call('SET', KEYS[1], new, 'PX', ttl)
return {new, ttl, 1}
"""
)

_KV_SET = (
    _LEDGER
    + """
local ttl = tonumber(ARGV[5])
if not charge(tonumber(ARGV[6]), ttl > 0 and tonumber(ARGV[1]) + ttl or '+inf') then
  return 3
end
if ttl > 0 then
  redis.call('SET', KEYS[1], ARGV[4], 'PX', ttl)
else
  redis.call('SET', KEYS[1], ARGV[4])
end
return 1
"""
)

_KV_DELETE = """
redis.call('DECRBY', KEYS[4], tonumber(redis.call('HGET', KEYS[3], KEYS[1]) or '0'))
redis.call('HDEL', KEYS[3], KEYS[1])
redis.call('ZREM', KEYS[2], KEYS[1])
redis.call('DEL', KEYS[1])
"""


def _at_quota(quota: Quota) -> QuotaExceeded:
    """What a script's refusal says: it does not tell keys from bytes."""
    return QuotaExceeded(f"the processor's state is at its quota of {quota.keys} keys or {quota.bytes} bytes")


def _ledger(key: bytes, row: bytes) -> list[bytes]:
    """The keys a script is given: the row's own, then its namespace's ledger."""
    namespace = namespace_of(key)
    return [row, b"z:" + namespace, b"s:" + namespace, b"b:" + namespace]


class RedisState:
    """The ``redis`` backend: one Redis for every replica; counters updated by a Lua script on the server."""

    CONNECTIONS = 16
    """Connections a worker keeps at most: more calls at once wait for one, bounded by their deadline."""

    def __init__(self, url: str, timeout: float) -> None:
        self._url = url
        self._timeout = timeout
        # Made on first use, on the event loop that uses it: asyncio connections belong to one loop.
        self._client: redis.asyncio.Redis | None = None
        self._scripts: dict[str, AsyncScript] = {}  # loaded into the server when it lacks them

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
            self._client = None
            self._scripts = {}

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
            scripts = {"counter_add": _COUNTER_ADD, "kv_set": _KV_SET, "kv_delete": _KV_DELETE}
            self._scripts = {name: self._client.register_script(text) for name, text in scripts.items()}
        return self._client

    @contextlib.asynccontextmanager
    async def _call(self) -> AsyncIterator[redis.asyncio.Redis]:
        try:
            yield self._redis()
        except redis.RedisError as error:
            raise StateUnavailable(f"redis state ({self._url}): {error}") from None

    async def counter_add(
        self, key: bytes, delta: int, window_ms: int, limit: int | None, timeout: float, quota: Quota
    ) -> Counter:
        row = b"c:" + key
        args = [_now_ms(), quota.keys, quota.bytes, delta, window_ms, "" if limit is None else limit]
        args.append(len(key) + COUNTER_BYTES)
        async with self._call():
            value, ttl, applied = await self._scripts["counter_add"](keys=_ledger(key, row), args=args)
        if applied == 2:  # the script's mark for an add out of range
            raise CounterOutOfRange(f"{value} + {delta} is out of a counter's range (±2^53)")
        if applied == 3:
            raise _at_quota(quota)
        return Counter(int(value), int(ttl), bool(applied))

    async def kv_get(self, key: bytes, timeout: float) -> bytes | None:
        async with self._call() as client:
            return cast("bytes | None", await client.get(b"k:" + key))  # responses are not decoded

    async def kv_set(self, key: bytes, value: bytes, ttl_ms: int, timeout: float, quota: Quota) -> None:
        row = b"k:" + key
        args: list[int | bytes] = [_now_ms(), quota.keys, quota.bytes, value, ttl_ms, len(key) + len(value)]
        async with self._call():
            stored = await self._scripts["kv_set"](keys=_ledger(key, row), args=args)
        if stored == 3:
            raise _at_quota(quota)

    async def kv_delete(self, key: bytes, timeout: float) -> None:
        async with self._call():
            await self._scripts["kv_delete"](keys=_ledger(key, b"k:" + key))


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
