"""WASI preview 1, locked down: what a Go (or other WASI) guest's runtime needs, nothing more.

No preopened directories, no environment, no arguments: a guest reaches
nothing outside its sandbox. Its stdout and stderr go to the gateway's log
under its processor's name, bounded like ``host.log``. Clocks and
``random_get`` work. ``proc_exit`` ends the guest with ``trap``; ``poll_oneoff``
answers every subscription at once (a guest cannot make its thread sleep).
"""

from __future__ import annotations

import logging
import os
import struct
import time

from .abi import GuestMemory
from .failures import Cause, ProcessorFailure
from .hostcalls import MAX_LOG_BYTES, host_call, write_guest_log
from .sandbox import Sandbox

WASI = "wasi_snapshot_preview1"
SUCCESS, EBADF, EINVAL = 0, 8, 28
STDIN, STDOUT, STDERR = 0, 1, 2
_STANDARD = (STDIN, STDOUT, STDERR)
_CHARACTER_DEVICE = 2
_RIGHT_FD_READ, _RIGHT_FD_WRITE = 1 << 1, 1 << 6
_CLOCKS = {0: time.time_ns, 1: time.monotonic_ns, 2: time.process_time_ns, 3: time.thread_time_ns}


@host_call("fd_write", "iiii", returns=True, module=WASI)
def fd_write(sandbox: Sandbox, memory: GuestMemory, fd: int, iovs: int, count: int, written: int) -> int:
    if fd not in (STDOUT, STDERR):
        return EBADF
    data = b"".join(memory.read(ptr, length, "fd_write's data") for ptr, length in memory.pairs(iovs, count, "iovecs"))
    pending = sandbox.output.setdefault(fd, bytearray())
    pending += data
    # A line per log record: runtimes write piecemeal (Go's panic output comes a few bytes at a time).
    while (end := pending.find(b"\n")) >= 0 or len(pending) > MAX_LOG_BYTES:
        line = bytes(pending[:end] if end >= 0 else pending[:MAX_LOG_BYTES])
        del pending[: end + 1 if end >= 0 else MAX_LOG_BYTES]
        write_guest_log(sandbox, logging.INFO if fd == STDOUT else logging.WARNING, line, len(line))
    memory.write(written, struct.pack("<I", len(data)), "fd_write's result")
    return SUCCESS


@host_call("fd_read", "iiii", returns=True, module=WASI)
def fd_read(sandbox: Sandbox, memory: GuestMemory, fd: int, _iovs: int, _count: int, read: int) -> int:
    if fd != STDIN:
        return EBADF
    memory.write(read, struct.pack("<I", 0), "fd_read's result")  # stdin is empty
    return SUCCESS


@host_call("fd_close", "i", returns=True, module=WASI)
def fd_close(sandbox: Sandbox, memory: GuestMemory, fd: int) -> int:
    return SUCCESS if fd in _STANDARD else EBADF


@host_call("fd_fdstat_get", "ii", returns=True, module=WASI)
def fd_fdstat_get(sandbox: Sandbox, memory: GuestMemory, fd: int, result: int) -> int:
    if fd not in _STANDARD:
        return EBADF  # no other descriptors, and no preopened directories
    rights = _RIGHT_FD_READ if fd == STDIN else _RIGHT_FD_WRITE
    memory.write(result, struct.pack("<BxHxxxxQQ", _CHARACTER_DEVICE, 0, rights, 0), "fd_fdstat_get's result")
    return SUCCESS


@host_call("fd_fdstat_set_flags", "ii", returns=True, module=WASI)
def fd_fdstat_set_flags(sandbox: Sandbox, memory: GuestMemory, fd: int, _flags: int) -> int:
    return SUCCESS if fd in _STANDARD else EBADF


@host_call("fd_prestat_get", "ii", returns=True, module=WASI)
def fd_prestat_get(sandbox: Sandbox, memory: GuestMemory, fd: int, _result: int) -> int:
    return EBADF  # no preopened directories: the guest sees no file system


@host_call("fd_prestat_dir_name", "iii", returns=True, module=WASI)
def fd_prestat_dir_name(sandbox: Sandbox, memory: GuestMemory, fd: int, _path: int, _length: int) -> int:
    return EBADF


@host_call("clock_time_get", "iIi", returns=True, module=WASI)
def clock_time_get(sandbox: Sandbox, memory: GuestMemory, clock: int, _precision: int, result: int) -> int:
    now = _CLOCKS.get(clock)
    if now is None:
        return EINVAL
    memory.write(result, struct.pack("<Q", now()), "clock_time_get's result")
    return SUCCESS


@host_call("random_get", "ii", returns=True, module=WASI)
def random_get(sandbox: Sandbox, memory: GuestMemory, buffer: int, length: int) -> int:
    memory.write(buffer, os.urandom(length), "random_get's buffer")
    return SUCCESS


@host_call("proc_exit", "i", module=WASI)
def proc_exit(sandbox: Sandbox, memory: GuestMemory, code: int) -> None:
    raise ProcessorFailure(Cause.TRAP, f"the guest exited with code {code}")


def _nothing(sandbox: Sandbox, memory: GuestMemory, count: int, size: int) -> int:
    """No arguments and no environment: both counts are 0."""
    memory.write(count, struct.pack("<I", 0), "the count")
    memory.write(size, struct.pack("<I", 0), "the size")
    return SUCCESS


def _none(sandbox: Sandbox, memory: GuestMemory, _pointers: int, _buffer: int) -> int:
    return SUCCESS


host_call("args_sizes_get", "ii", returns=True, module=WASI)(_nothing)
host_call("environ_sizes_get", "ii", returns=True, module=WASI)(_nothing)
host_call("args_get", "ii", returns=True, module=WASI)(_none)
host_call("environ_get", "ii", returns=True, module=WASI)(_none)


@host_call("sched_yield", "", returns=True, module=WASI)
def sched_yield(sandbox: Sandbox, memory: GuestMemory) -> int:
    return SUCCESS


@host_call("poll_oneoff", "iiii", returns=True, module=WASI)
def poll_oneoff(sandbox: Sandbox, memory: GuestMemory, subscriptions: int, events: int, count: int, out: int) -> int:
    # subscription: userdata u64, tag u8 (+ 40 bytes); event: userdata u64, errno u16, type u8 (32 bytes)
    raw = memory.read(subscriptions, count * 48, "poll_oneoff's subscriptions")
    answered = b"".join(
        struct.pack("<QHB5x16x", *struct.unpack_from("<Q", raw, 48 * i), 0, raw[48 * i + 8]) for i in range(count)
    )
    memory.write(events, answered, "poll_oneoff's events")
    memory.write(out, struct.pack("<I", count), "poll_oneoff's count")
    return SUCCESS
