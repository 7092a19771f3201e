"""The engine's epoch ticker, in native code: deadlines hold without the GIL.

A deadline interrupts a guest when the engine's epoch passes it, so
something must advance the epoch while guests run. A Python thread would
need the GIL for every tick, and a host thread holding the GIL through a
guest call (the short ABI calls do, see ``ffi``) would stop the clock that
is meant to stop that guest. So the ticker is a POSIX timer whose every
expiry calls ``wasmtime_engine_increment_epoch(engine)`` directly on a
native thread (``SIGEV_THREAD``, the engine pointer as the ``sigval``):
no Python code runs per tick, and a guest spinning with the GIL held still
ends at its deadline.

Linux (glibc), which the gateway needs anyway for ``SO_REUSEPORT``.
"""

from __future__ import annotations

import atexit
import ctypes
import ctypes.util
import os
from ctypes import POINTER, Structure, Union, byref, c_int, c_long, c_void_p

import wasmtime

from . import ffi

_SIGEV_THREAD = 2
_CLOCK_MONOTONIC = 1


class _SigVal(Union):
    _fields_ = [("sival_int", c_int), ("sival_ptr", c_void_p)]


class _SigEvThread(Structure):
    _fields_ = [("function", c_void_p), ("attribute", c_void_p)]


class _SigEvUnion(Union):
    _fields_ = [("_pad", c_int * 12), ("_tid", c_int), ("thread", _SigEvThread)]


class _SigEvent(Structure):
    """``struct sigevent`` (64 bytes on Linux)."""

    _fields_ = [("value", _SigVal), ("signo", c_int), ("notify", c_int), ("un", _SigEvUnion)]


class _TimeSpec(Structure):
    _fields_ = [("tv_sec", c_long), ("tv_nsec", c_long)]


class _ITimerSpec(Structure):
    _fields_ = [("interval", _TimeSpec), ("value", _TimeSpec)]


def _librt() -> ctypes.CDLL:
    # glibc 2.34 and later have the timer calls in libc itself; older ones in librt.
    for name in (None, ctypes.util.find_library("rt")):
        lib = ctypes.CDLL(name, use_errno=True)
        if hasattr(lib, "timer_create"):
            lib.timer_create.argtypes = [c_int, POINTER(_SigEvent), POINTER(c_void_p)]
            lib.timer_settime.argtypes = [c_void_p, c_int, POINTER(_ITimerSpec), c_void_p]
            lib.timer_delete.argtypes = [c_void_p]
            return lib
    raise RuntimeError("wasmgate needs POSIX timers (timer_create) to enforce guest deadlines: run it on Linux")


class EpochTicker:
    """Advances ``engine``'s epoch every ``tick`` seconds until ``close``."""

    def __init__(self, engine: wasmtime.Engine, tick: float) -> None:
        self._engine = engine  # the timer calls into it: it lives as long as the timer
        self._lib = _librt()
        event = _SigEvent()
        event.notify = _SIGEV_THREAD
        event.value.sival_ptr = ffi.address(engine.ptr())
        event.un.thread.function = ctypes.cast(ffi.increment_epoch, c_void_p).value
        self._timer = c_void_p()
        if self._lib.timer_create(_CLOCK_MONOTONIC, byref(event), byref(self._timer)) != 0:
            raise OSError(ctypes.get_errno(), f"timer_create: {os.strerror(ctypes.get_errno())}")
        seconds, fraction = divmod(tick, 1.0)
        period = _TimeSpec(int(seconds), int(fraction * 1e9))
        if self._lib.timer_settime(self._timer, 0, byref(_ITimerSpec(period, period)), None) != 0:
            self.close()
            raise OSError(ctypes.get_errno(), f"timer_settime: {os.strerror(ctypes.get_errno())}")
        # At exit the engine is freed with everything else: the timer must stop first.
        atexit.register(self.close)

    def close(self) -> None:
        if self._timer.value is not None:
            self._lib.timer_delete(self._timer)
            self._timer = c_void_p()
