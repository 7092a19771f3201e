"""The gateway's log: JSON Lines by default, one line per request, written in batches.

Every line is one JSON object with no prefix, so ``jq`` reads the log as it
is, and what a guest writes cannot start a line of its own: ``time`` (UTC),
``level``, ``logger``, ``message``, the record's ``processor``,
``request_id`` and ``cause`` when it has them, ``worker`` in a worker
process, and ``error`` with a traceback. An access line is the request's own
fields instead of a message. ``log_format: text`` keeps the classic
``time LEVEL name: message`` lines.

A write to stderr is a system call, and one per request cost about 90 µs
of the event loop's time on the project's machines (a third of a proxied
request). So lines collect in a 64 KiB buffer that is written when full,
every ``FLUSH_INTERVAL`` seconds, and at once for warnings and errors, as
Envoy's access logs do. Worker processes share stderr, so a buffer is
written as whole lines only (``LineWriter``), and to a pipe in writes of at
most ``PIPE_BUF`` bytes, which the kernel never interleaves with another
process's: lines from several workers never mix mid-line. The access line every request writes skips
``logging``'s records (``access``): through them a line cost about 40 µs
of a request under load.
"""

from __future__ import annotations

import json
import logging
import os
import select
import stat
import sys
import threading
import time
from typing import Any, Protocol

FLUSH_INTERVAL = 1.0
BUFFER_BYTES = 64 * 1024
RECORD_FIELDS = ("processor", "request_id", "cause")
"""What a record may carry beside its message (``extra=``), copied to its JSON line."""


class _Clock:
    """The time of a line, formatted once per second."""

    def __init__(self, iso: bool) -> None:
        self._iso = iso
        self._second = -1
        self._stamp = ""

    def now(self) -> str:
        return self.at(time.time())

    def at(self, when: float) -> str:
        second = int(when)
        if second != self._second:
            if self._iso:
                self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            else:  # as logging.Formatter's asctime
                self._stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
            self._second = second
        millis = int((when - second) * 1000)
        return f"{self._stamp}.{millis:03d}Z" if self._iso else f"{self._stamp},{millis:03d}"


class JsonFormatter(logging.Formatter):
    """A record as one JSON object."""

    def __init__(self, worker: int | None = None) -> None:
        super().__init__()
        self._clock = _Clock(iso=True)
        self._worker = {"worker": worker} if worker is not None else {}

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": self._clock.at(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        line.update((field, getattr(record, field)) for field in RECORD_FIELDS if hasattr(record, field))
        line.update(self._worker)
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


class Lines(Protocol):
    """Where a handler writes: whole lines per ``write``, sent on ``flush``."""

    def write(self, text: str, /) -> int: ...
    def flush(self) -> None: ...


class BatchingHandler(logging.StreamHandler):
    """Writes records to a buffered stream; flushes on warnings, a full buffer, or the timer."""

    def __init__(self, stream: Lines, worker: int | None = None, json_lines: bool = True) -> None:
        """``worker``: the pid that tags every line of a worker process."""
        super().__init__(stream)
        self._json_lines = json_lines
        self._worker = worker
        where = f" [worker {worker}]" if worker is not None else ""
        self.template = "{asctime} {levelname}" + where + " {name}: {message}"
        self.setFormatter(JsonFormatter(worker) if json_lines else logging.Formatter(self.template, style="{"))
        self._clock = _Clock(iso=json_lines)

    def write_access(self, fields: dict[str, Any]) -> None:
        """Writes an access line, as ``emit`` would for an INFO record of ``wasmgate.access``, without making one."""
        if self._json_lines:
            line: dict[str, Any] = {"time": self._clock.now(), "level": "INFO", "logger": access_log.name, **fields}
            if self._worker is not None:
                line["worker"] = self._worker
            text = json.dumps(line, default=str)
        else:
            message, asctime = json.dumps(fields, default=str), self._clock.now()
            text = self.template.format(asctime=asctime, levelname="INFO", name=access_log.name, message=message)
        self.acquire()
        try:
            self.stream.write(text + self.terminator)
        finally:
            self.release()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.stream.write(self.format(record) + self.terminator)
            if record.levelno >= logging.WARNING:
                self.flush()
        except Exception:  # as StreamHandler does: a failed log line must not fail the request
            self.handleError(record)


access_log = logging.getLogger("wasmgate.access")
_handler: BatchingHandler | None = None  # once configure() has run


def access(fields: dict[str, Any]) -> None:
    """Writes one access-log line (check ``access_log.isEnabledFor(logging.INFO)`` before making it)."""
    if _handler is not None:
        _handler.write_access(fields)
    else:
        access_log.info(json.dumps(fields, default=str))


class LineWriter:
    """A text stream to a file descriptor that buffers up to ``limit`` bytes and writes whole lines only; to a
    pipe or a socket (journald's), in writes of at most ``PIPE_BUF`` bytes (a longer line alone). Each
    ``write`` must be whole lines, as the handlers' are."""

    def __init__(self, fd: int, limit: int = BUFFER_BYTES) -> None:
        self._fd = fd
        self._limit = limit
        mode = os.fstat(fd).st_mode
        self._chunk = select.PIPE_BUF if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) else limit
        self._lines: list[bytes] = []
        self._size = 0
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        data = text.encode("utf-8", "backslashreplace")
        with self._lock:
            self._lines.append(data)
            self._size += len(data)
            if self._size >= self._limit:
                self._write_all()
        return len(text)

    def flush(self) -> None:
        with self._lock:
            self._write_all()

    def _write_all(self) -> None:
        lines, self._lines, self._size = self._lines, [], 0
        chunk = b""
        for line in lines:
            if chunk and len(chunk) + len(line) > self._chunk:
                self._write(chunk)
                chunk = b""
            chunk += line
        if chunk:
            self._write(chunk)

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]


def configure(worker: int | None = None, json_lines: bool = True) -> None:
    """Logs INFO and up to stderr, batched; ``worker`` tags each line of a worker process."""
    global _handler
    _handler = handler = BatchingHandler(LineWriter(sys.stderr.fileno()), worker, json_lines)
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)
    logging.getLogger("watchfiles").setLevel(logging.WARNING)  # its "N changes detected": each reload logs once
    threading.Thread(target=_flush_every, args=(handler,), name="wasmgate-log-flush", daemon=True).start()


def _flush_every(handler: logging.Handler) -> None:
    # A daemon: it ends with the process, after logging.shutdown's last flush.
    while True:
        time.sleep(FLUSH_INTERVAL)
        handler.flush()
