"""The gateway's log is written in batches, but never sits on a warning."""

from __future__ import annotations

import io
import logging
import re

from wasmgate.logs import BatchingHandler


def handler_over(raw: io.BytesIO) -> BatchingHandler:
    handler = BatchingHandler(io.TextIOWrapper(io.BufferedWriter(raw, 64 * 1024), encoding="utf-8"))
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    return handler


def record(level: int, message: str) -> logging.LogRecord:
    return logging.LogRecord("wasmgate.access", level, __file__, 1, message, None, None)


def test_info_lines_wait_in_the_buffer_until_a_flush():
    raw = io.BytesIO()
    handler = handler_over(raw)
    handler.emit(record(logging.INFO, "a request"))
    assert raw.getvalue() == b""
    handler.flush()
    assert raw.getvalue() == b"INFO a request\n"


def test_a_warning_is_written_at_once_with_the_lines_before_it():
    raw = io.BytesIO()
    handler = handler_over(raw)
    handler.emit(record(logging.INFO, "a request"))
    handler.emit(record(logging.WARNING, "a processor failed"))
    assert raw.getvalue() == b"INFO a request\nWARNING a processor failed\n"


def test_an_access_line_reads_as_the_same_line_logged_through_a_record():
    raw = io.BytesIO()
    handler = BatchingHandler(io.TextIOWrapper(io.BufferedWriter(raw, 64 * 1024), encoding="utf-8"), " [worker 7]")
    handler.write_info("wasmgate.access", '{"status": 200}')
    handler.emit(record(logging.INFO, '{"status": 200}'))
    handler.flush()
    direct, through_record = raw.getvalue().decode().splitlines()
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}"
    assert re.fullmatch(stamp + r' INFO \[worker 7\] wasmgate\.access: \{"status": 200\}', direct)
    assert re.sub(stamp, "", direct) == re.sub(stamp, "", through_record)
