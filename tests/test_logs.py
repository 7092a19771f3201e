"""The gateway's log is written in batches, but never sits on a warning."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import subprocess
import sys
import time

from wasmgate.logs import BatchingHandler

from .conftest import ROOT


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


def stream_over(raw: io.BytesIO) -> io.TextIOWrapper:
    return io.TextIOWrapper(io.BufferedWriter(raw, 64 * 1024), encoding="utf-8")


def test_a_text_access_line_reads_as_the_same_line_logged_through_a_record():
    raw = io.BytesIO()
    handler = BatchingHandler(stream_over(raw), worker=7, json_lines=False)
    handler.write_access({"status": 200})
    handler.emit(record(logging.INFO, '{"status": 200}'))
    handler.flush()
    direct, through_record = raw.getvalue().decode().splitlines()
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}"
    assert re.fullmatch(stamp + r' INFO \[worker 7\] wasmgate\.access: \{"status": 200\}', direct)
    assert re.sub(stamp, "", direct) == re.sub(stamp, "", through_record)


def test_a_json_line_is_one_object_with_the_records_fields_and_no_prefix():
    raw = io.BytesIO()
    handler = BatchingHandler(stream_over(raw), worker=7)
    logged = logging.LogRecord("wasmgate.guest", logging.WARNING, __file__, 1, "[p] %s", ("a\nb",), None)
    logged.processor, logged.request_id = "p", "r-1"
    handler.emit(logged)
    [line] = raw.getvalue().decode().splitlines()  # the newline in the message does not start a line
    fields = json.loads(line)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", fields.pop("time"))
    assert fields == {
        "level": "WARNING",
        "logger": "wasmgate.guest",
        "message": "[p] a\nb",
        "processor": "p",
        "request_id": "r-1",
        "worker": 7,
    }


def test_a_json_access_line_is_the_requests_fields():
    raw = io.BytesIO()
    handler = BatchingHandler(stream_over(raw))
    handler.write_access({"status": 200, "route": "chat"})
    handler.flush()
    fields = json.loads(raw.getvalue())
    del fields["time"]
    assert fields == {"level": "INFO", "logger": "wasmgate.access", "status": 200, "route": "chat"}


def test_a_json_line_carries_the_traceback_of_an_error():
    raw = io.BytesIO()
    handler = BatchingHandler(stream_over(raw))
    try:
        raise ValueError("boom")
    except ValueError:
        failed = logging.LogRecord("wasmgate", logging.ERROR, __file__, 1, "failed", None, sys.exc_info())
    handler.emit(failed)
    assert "ValueError: boom" in json.loads(raw.getvalue())["error"]


WRITER = """
import sys
from wasmgate.logs import BatchingHandler, LineWriter
handler = BatchingHandler(LineWriter(1), worker=int(sys.argv[1]))
for i in range(2000):
    handler.write_access({"n": i, "padding": "x" * (i % 700)})  # lines of many lengths, buffers cut anywhere
handler.flush()
"""


def test_lines_from_several_processes_on_one_pipe_never_mix():
    read, write = os.pipe()
    writers = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(worker)], stdout=write, cwd=ROOT) for worker in (1, 2, 3)
    ]
    os.close(write)
    chunks = []
    with os.fdopen(read, "rb", buffering=0) as pipe:
        while chunk := pipe.read(8192):  # a slow reader: the pipe fills, and writers block mid-write
            chunks.append(chunk)
            time.sleep(0.001)
    output = b"".join(chunks)
    assert [writer.wait(60) for writer in writers] == [0, 0, 0]
    lines = [json.loads(line) for line in output.decode().splitlines()]  # each whole, or this fails
    assert sorted((line["worker"], line["n"]) for line in lines) == [(w, n) for w in (1, 2, 3) for n in range(2000)]
