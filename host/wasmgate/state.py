"""State processors share: windowed counters and a key-value store.

Two backends, chosen by the gateway config's ``state.backend``:

``memory`` (the default): a SQLite database in shared memory
(``/dev/shm``), created by the process that starts the gateway and opened
by each of its worker processes. It is the single source of truth for all
of them: every counter update is one SQLite write transaction, which the
database's lock makes atomic across processes, with no server to run. A
worker that dies loses nothing. It is not shared between gateways: for
several replicas behind a load balancer, use ``redis``.

``redis``: a Redis server. Counter updates run as one Lua script on the
server, so they are atomic across every replica; a connection pool per
worker. An unreachable server is reported when the gateway starts.

Counters live in fixed windows from their first add. A ``limit`` makes an
add conditional: it happens only if the value stays at or under the limit.
Keys arrive already namespaced (see ``hostcalls``).
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import redis

from .config import ConfigError, StateBackendKind, StateConfig


class StateUnavailable(Exception):
    """The backend did not answer, or failed; the message says which and why."""


@dataclass(frozen=True, slots=True)
class Counter:
    value: int
    reset_ms: int
    applied: bool


class State(Protocol):
    def counter_add(self, key: bytes, delta: int, window_ms: int, limit: int | None, timeout: float) -> Counter: ...
    def kv_get(self, key: bytes, timeout: float) -> bytes | None: ...
    def kv_set(self, key: bytes, value: bytes, ttl_ms: int, timeout: float) -> None: ...
    def kv_delete(self, key: bytes, timeout: float) -> None: ...


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class MemoryState:
    """The ``memory`` backend: one SQLite file in shared memory for every worker of a gateway."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()
        with self._transaction(5.0) as db:
            db.execute("CREATE TABLE IF NOT EXISTS counters (key BLOB PRIMARY KEY, value INTEGER, window_end INTEGER)")
            db.execute("CREATE TABLE IF NOT EXISTS kv (key BLOB PRIMARY KEY, value BLOB, expires INTEGER)")

    @classmethod
    def create(cls) -> MemoryState:
        """A new database, in shared memory where there is some."""
        directory = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path("/tmp")
        return cls(directory / f"wasmgate-state-{uuid.uuid4().hex}.sqlite")

    def remove(self) -> None:
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(f"{self.path}{suffix}").unlink(missing_ok=True)

    @contextlib.contextmanager
    def _transaction(self, timeout: float) -> Iterator[sqlite3.Connection]:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        try:
            if db is None:  # a connection per thread: SQLite's are not shared between threads
                db = self._local.db = sqlite3.connect(self.path, isolation_level=None)
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=OFF")  # shared memory: nothing to make durable
            db.execute(f"PRAGMA busy_timeout={max(1, int(timeout * 1000))}")
            db.execute("BEGIN IMMEDIATE")  # the write lock first: read-modify-write is atomic
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        except sqlite3.Error as error:
            raise StateUnavailable(f"memory state ({self.path}): {error}") from None

    def counter_add(self, key: bytes, delta: int, window_ms: int, limit: int | None, timeout: float) -> Counter:
        now = _now_ms()
        with self._transaction(timeout) as db:
            row = db.execute("SELECT value, window_end FROM counters WHERE key = ?", (key,)).fetchone()
            value, window_end = (row[0], row[1]) if row is not None and row[1] > now else (0, now + window_ms)
            new = value + delta
            applied = limit is None or new <= limit
            if applied:
                db.execute("INSERT OR REPLACE INTO counters VALUES (?, ?, ?)", (key, new, window_end))
        return Counter(new if applied else value, window_end - now, applied)

    def kv_get(self, key: bytes, timeout: float) -> bytes | None:
        with self._transaction(timeout) as db:
            row = db.execute("SELECT value, expires FROM kv WHERE key = ?", (key,)).fetchone()
        if row is None or (row[1] and row[1] <= _now_ms()):
            return None
        return row[0]

    def kv_set(self, key: bytes, value: bytes, ttl_ms: int, timeout: float) -> None:
        expires = _now_ms() + ttl_ms if ttl_ms else 0
        with self._transaction(timeout) as db:
            db.execute("INSERT OR REPLACE INTO kv VALUES (?, ?, ?)", (key, value, expires))

    def kv_delete(self, key: bytes, timeout: float) -> None:
        with self._transaction(timeout) as db:
            db.execute("DELETE FROM kv WHERE key = ?", (key,))


_COUNTER_ADD = """
local value = tonumber(redis.call('GET', KEYS[1]) or '0')
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then
  value = 0
  ttl = tonumber(ARGV[2])
end
local new = value + tonumber(ARGV[1])
if ARGV[3] ~= '' and new > tonumber(ARGV[3]) then
  return {value, ttl, 0}
end
redis.call('SET', KEYS[1], new, 'PX', ttl)
return {new, ttl, 1}
"""


class RedisState:
    """The ``redis`` backend: one Redis for every replica; counters updated by a Lua script on the server."""

    def __init__(self, url: str, timeout: float) -> None:
        self._url = url
        # redis-py sets timeouts per connection: each call is bounded by state.timeout
        # (the host starts none past the phase's deadline).
        self._redis = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
        self._counter_add = self._redis.register_script(_COUNTER_ADD)

    def check(self) -> None:
        """Raises ``ConfigError`` if the server cannot be reached: at start, not at the first request."""
        try:
            self._redis.ping()
        except redis.RedisError as error:
            raise ConfigError("config", [f"state.url: cannot reach Redis at {self._url}: {error}"]) from None

    @contextlib.contextmanager
    def _call(self) -> Iterator[None]:
        try:
            yield
        except redis.RedisError as error:
            raise StateUnavailable(f"redis state ({self._url}): {error}") from None

    def counter_add(self, key: bytes, delta: int, window_ms: int, limit: int | None, timeout: float) -> Counter:
        with self._call():
            value, ttl, applied = self._counter_add(
                keys=[b"c:" + key], args=[delta, window_ms, "" if limit is None else limit]
            )
        return Counter(int(value), int(ttl), bool(applied))

    def kv_get(self, key: bytes, timeout: float) -> bytes | None:
        with self._call():
            return self._redis.get(b"k:" + key)

    def kv_set(self, key: bytes, value: bytes, ttl_ms: int, timeout: float) -> None:
        with self._call():
            self._redis.set(b"k:" + key, value, px=ttl_ms or None)

    def kv_delete(self, key: bytes, timeout: float) -> None:
        with self._call():
            self._redis.delete(b"k:" + key)


def open_state(config: StateConfig) -> State:
    """The configured backend, checked. A memory database is made when the config names none:
    the caller that made it removes it (``MemoryState.remove``)."""
    if config.backend is StateBackendKind.REDIS:
        state = RedisState(config.url, config.timeout)
        state.check()
        return state
    return MemoryState.create() if config.path is None else MemoryState(config.path)
