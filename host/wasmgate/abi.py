"""The canonical ABI of ``wit/processor.wit`` as the host sees it.

The world's core-module lowering, exactly as ``wit-bindgen`` emits it:
hooks exported as ``wasmgate:processor/handler@0.1.0#<func>``, host calls
imported from ``wasmgate:processor/host@0.1.0``, ``cabi_realloc`` for the
memory the host hands in, ``cabi_post_*`` after results that own memory.

Everything the host reads from guest memory is bounds-checked here, and
strings are strictly UTF-8: a bad pointer, length or encoding from a guest
is an ``AbiViolation``, never a host error.
"""

from __future__ import annotations

import ctypes
import enum
import struct

import msgpack

from . import ffi
from .failures import AbiViolation, Cause, ProcessorFailure

HOST_MODULE = "wasmgate:processor/host@0.1.0"
HANDLER = "wasmgate:processor/handler@0.1.0"
WASM_PAGE = 65536
RESUME_EXPORT = f"{HANDLER}#on-resume".encode()
"""``on-resume``: not a phase of its own but the continuation of a paused hook."""


class Hook(enum.Enum):
    """A handler export: its WIT name, and whether it takes a body."""

    INIT = ("init", False)
    REQUEST_HEADERS = ("on-request-headers", False)
    REQUEST_BODY = ("on-request-body", True)
    RESPONSE_HEADERS = ("on-response-headers", False)
    RESPONSE_BODY = ("on-response-body", True)
    DONE = ("on-done", False)

    # Members are singletons: identity hashing is correct, and a C slot instead of
    # Enum's Python-level __hash__ (a request looks hooks up in dicts about 30 times).
    __hash__ = object.__hash__

    def __init__(self, wit_name: str, takes_body: bool) -> None:
        self.wit_name = wit_name
        self.takes_body = takes_body
        self.export = f"{HANDLER}#{wit_name}".encode()
        self.post_return = f"cabi_post_{HANDLER}#{wit_name}".encode()

    @property
    def phase(self) -> str:
        """The name used in config, metrics and errors: ``request_headers``."""
        return self.name.lower()


class Phases(enum.IntFlag):
    """WIT ``flags phases``: the hooks a processor asked for in ``init``."""

    REQUEST_HEADERS = 1
    REQUEST_BODY = 2
    RESPONSE_HEADERS = 4
    RESPONSE_BODY = 8
    DONE = 16
    ALL = 31


PHASE_OF_HOOK = {
    Hook.REQUEST_HEADERS: Phases.REQUEST_HEADERS,
    Hook.REQUEST_BODY: Phases.REQUEST_BODY,
    Hook.RESPONSE_HEADERS: Phases.RESPONSE_HEADERS,
    Hook.RESPONSE_BODY: Phases.RESPONSE_BODY,
    Hook.DONE: Phases.DONE,
}


class Action(enum.IntEnum):
    """WIT ``enum action``."""

    CONTINUE = 0
    RESPOND = 1
    PAUSE = 2


class Message(enum.IntEnum):
    """WIT ``enum message``: which message's headers a host call means."""

    REQUEST = 0
    RESPONSE = 1


class LogLevel(enum.IntEnum):
    TRACE = 0
    DEBUG = 1
    INFO = 2
    WARN = 3
    ERROR = 4


class MetricKind(enum.IntEnum):
    COUNTER = 0
    GAUGE = 1
    HISTOGRAM = 2


def enum_value(kind: type[enum.IntEnum], raw: int, what: str) -> enum.IntEnum:
    try:
        return kind(raw)
    except ValueError:
        raise AbiViolation(f"{what}: {raw} is not a valid {kind.__name__}") from None


def encode_headers(headers: list[tuple[str, str]]) -> bytes:
    """``get-headers``' result: a MessagePack array of ``[name, value]`` pairs."""
    return msgpack.packb([(name.lower(), value) for name, value in headers])


class GuestMemory:
    """A guest's linear memory during one hook invocation or host call.

    Where memory starts and how big it is are read on first use and again
    after the guest ran (``alloc``), since growing memory may move it.
    """

    __slots__ = ("_context", "_memory", "_realloc", "_slots", "_store", "_base", "_size")

    def __init__(
        self,
        context: int,
        memory_ref: object,
        realloc_ref: object,
        slots: ctypes.Array[ffi.RawVal],
        store: ffi.Store | None,
    ) -> None:
        """``store`` when the host owns the store; None inside a host call, on the caller's ``context``."""
        self._context = context
        self._memory = memory_ref
        self._realloc = realloc_ref
        self._slots = slots
        self._store = store
        self._base = -1
        self._size = 0

    def _view(self) -> None:
        self._base = ffi.memory_base(self._context, self._memory)
        self._size = ffi.memory_size(self._context, self._memory)

    def _check(self, ptr: int, length: int, what: str) -> None:
        if self._base < 0:
            self._view()
        if ptr + length > self._size:
            raise AbiViolation(
                f"{what}: {length} bytes at 0x{ptr:x} run past the end of guest memory ({self._size} bytes)"
            )

    def read(self, ptr: int, length: int, what: str) -> bytes:
        self._check(ptr, length, what)
        return ctypes.string_at(self._base + ptr, length)

    def string(self, ptr: int, length: int, what: str) -> str:
        try:
            return self.read(ptr, length, what).decode("utf-8")
        except UnicodeDecodeError as error:
            raise AbiViolation(f"{what} is not valid UTF-8 ({error.reason} at byte {error.start})") from None

    def pairs(self, ptr: int, count: int, what: str) -> list[tuple[int, int]]:
        """A list of ``(ptr, len)`` pairs: lowered strings or byte lists."""
        raw = self.read(ptr, count * 8, what)
        flat = struct.unpack(f"<{count * 2}I", raw)
        return list(zip(flat[0::2], flat[1::2], strict=True))

    def strings(self, ptr: int, count: int, what: str) -> list[str]:
        return [self.string(p, n, what) for p, n in self.pairs(ptr, count, what)]

    def f64s(self, ptr: int, count: int, what: str) -> tuple[float, ...]:
        if ptr % 8:
            raise AbiViolation(f"{what}: list<f64> at 0x{ptr:x} is not 8-byte aligned")
        return struct.unpack(f"<{count}d", self.read(ptr, count * 8, what))

    def write(self, ptr: int, data: bytes, what: str) -> None:
        self._check(ptr, len(data), what)
        ffi.copy(self._base + ptr, data, len(data))

    def alloc(self, data: bytes, what: str, align: int = 1) -> int:
        """Copies ``data`` into memory the guest allocates: one call, one copy.

        The guest owns the allocation afterwards, as the canonical ABI says.
        An empty value needs no allocation: any aligned pointer will do.
        """
        if not data:
            return align
        slots = self._slots
        slots[0].u32, slots[1].u32, slots[2].u32, slots[3].u32 = 0, 0, align, len(data)
        if self._store is None:
            ffi.call_in(self._context, self._realloc, slots)
        else:
            self._store.call(self._realloc, slots)
        ptr = slots[0].u32
        self._view()
        if ptr == 0 or ptr % align:
            raise ProcessorFailure(
                Cause.MEMORY_LIMIT if ptr == 0 else Cause.ABI_VIOLATION,
                f"cabi_realloc returned 0x{ptr:x} for {len(data)} bytes of {what}",
            )
        self.write(ptr, data, f"cabi_realloc's result for {what}")
        return ptr

    def write_aligned(self, ptr: int, data: bytes, what: str) -> None:
        """Writes a result into the guest's return area, which the canonical ABI aligns to 4 here."""
        if ptr % 4:
            raise AbiViolation(f"{what}: return area 0x{ptr:x} is not 4-byte aligned")
        self.write(ptr, data, what)

    def write_u32s(self, ptr: int, values: tuple[int, ...], what: str) -> None:
        self.write_aligned(ptr, struct.pack(f"<{len(values)}I", *values), what)

    def lower_string(self, value: str, what: str) -> tuple[int, int]:
        data = value.encode()
        return self.alloc(data, what), len(data)
