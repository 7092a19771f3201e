"""The wasmtime C API calls on the request path, bound once and called directly.

wasmtime-py's public API does Python-side type handling on every call: a
guest call costs about 60 µs through ``Func.__call__`` and 2-3 µs through
``wasmtime_func_call_unchecked`` (measured on the project's 2-core machines).
Per request the host instantiates a module and calls a handful of exports,
so this module binds the few C functions that path needs, with exact
signatures, for the pinned wasmtime version (see ``pyproject.toml``).

Everything else (compiling, linking, serializing, traps' messages) goes
through the public ``wasmtime`` package, off the request path.

A ``Store`` is used by one thread at a time. Guest calls keep the GIL
unless asked (``release_gil``): handing it to a busy event loop and waiting
to get it back costs far more than a typical hook (measured: the gateway
bench went from 1,850 to 2,570 req/s when hooks stopped releasing it).
So that a long-running guest cannot starve the event loop, a store gets an
epoch-deadline callback (``EpochCallback``) which the sandbox uses to give
the loop a turn on every tick a guest keeps running.
The native epoch ticker (``epoch``) needs no GIL, so even a guest spinning
without a host call reaches that callback.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from ctypes import (
    CFUNCTYPE,
    POINTER,
    PYFUNCTYPE,
    Union,
    byref,
    c_bool,
    c_char_p,
    c_double,
    c_int32,
    c_int64,
    c_size_t,
    c_uint8,
    c_uint32,
    c_uint64,
    c_void_p,
)

import wasmtime
from wasmtime import _bindings as _b
from wasmtime import _ffi

_dll = _ffi.dll


def _bind(name: str, restype: object, *argtypes: object, releases_gil: bool = False) -> Callable[..., object]:
    """Binds a C function; it keeps the GIL unless ``releases_gil``."""
    prototype = (CFUNCTYPE if releases_gil else PYFUNCTYPE)(restype, *argtypes)
    return prototype((name, _dll))


class RawVal(Union):
    """``wasmtime_val_raw_t``: one argument or result slot of an unchecked call."""

    _fields_ = [
        ("u32", c_uint32),  # wasm i32 read as unsigned: pointers and lengths
        ("i32", c_int32),
        ("i64", c_int64),
        ("f64", c_double),
        ("_v128", c_uint8 * 16),
    ]


Instance = _b.wasmtime_instance_t
Func = _b.wasmtime_func_t
Memory = _b.wasmtime_memory_t
Extern = _b.wasmtime_extern_t

EXTERN_FUNC = _ffi.WASMTIME_EXTERN_FUNC.value
EXTERN_MEMORY = _ffi.WASMTIME_EXTERN_MEMORY.value
DEADLINE_CONTINUE = 0
"""``WASMTIME_UPDATE_DEADLINE_CONTINUE``: an ``EpochCallback`` lets the guest go on."""

_NO_FINALIZER = ctypes.cast(0, CFUNCTYPE(None, c_void_p))

_store_new = _bind("wasmtime_store_new", c_void_p, c_void_p, c_void_p, c_void_p)
_store_context = _bind("wasmtime_store_context", c_void_p, c_void_p)
_store_delete = _bind("wasmtime_store_delete", None, c_void_p)
_store_limiter = _bind("wasmtime_store_limiter", None, c_void_p, c_int64, c_int64, c_int64, c_int64, c_int64)
_set_epoch_deadline = _bind("wasmtime_context_set_epoch_deadline", None, c_void_p, c_uint64)
_instantiate_pre = _bind("wasmtime_instance_pre_instantiate", c_void_p, c_void_p, c_void_p, c_void_p, c_void_p)
_export_get = _bind("wasmtime_instance_export_get", c_bool, c_void_p, c_void_p, c_char_p, c_size_t, c_void_p)
_CALL_SIGNATURE = (c_void_p, c_void_p, c_void_p, c_void_p, c_size_t, c_void_p)
_call_unchecked = _bind("wasmtime_func_call_unchecked", *_CALL_SIGNATURE)
_call_unchecked_releasing = _bind("wasmtime_func_call_unchecked", *_CALL_SIGNATURE, releases_gil=True)
_epoch_deadline_callback = _bind("wasmtime_store_epoch_deadline_callback", None, c_void_p, c_void_p, c_void_p, c_void_p)
_error_new = _bind("wasmtime_error_new", c_void_p, c_char_p)
_caller_context = _bind("wasmtime_caller_context", c_void_p, c_void_p)
_memory_data = _bind("wasmtime_memory_data", c_void_p, c_void_p, c_void_p)
_memory_data_size = _bind("wasmtime_memory_data_size", c_size_t, c_void_p, c_void_p)
_trap_new = _bind("wasmtime_trap_new", c_void_p, c_char_p, c_size_t)
_define_unchecked = _bind(
    "wasmtime_linker_define_func_unchecked",
    c_void_p,
    c_void_p,
    c_char_p,
    c_size_t,
    c_char_p,
    c_size_t,
    c_void_p,
    c_void_p,
    c_void_p,
    c_void_p,
)

increment_epoch = _dll.wasmtime_engine_increment_epoch
"""The C function the epoch ticker's timer calls on its own thread; not called from Python."""

copy = PYFUNCTYPE(c_void_p, c_void_p, c_char_p, c_size_t)(ctypes.cast(ctypes.memmove, c_void_p).value)
"""``memmove`` keeping the GIL (``ctypes.memmove`` releases it): copying a body costs less than a GIL handoff."""

HostCallback = CFUNCTYPE(c_size_t, c_void_p, c_void_p, POINTER(RawVal), c_size_t)

EpochCallback = CFUNCTYPE(c_size_t, c_void_p, c_void_p, POINTER(c_uint64), POINTER(c_uint8))
"""Called when a running guest reaches its epoch deadline: returns 0 after setting the next
deadline (ticks from now) in its third argument, or an ``error`` to stop the guest."""


def error(message: str) -> int:
    """A new ``wasmtime_error_t``, for a callback to stop a guest with."""
    return _error_new(message.encode())


class WasmTrap(Exception):
    """The guest trapped: ``code`` is wasmtime's trap code, or None."""

    def __init__(self, message: str, code: int | None) -> None:
        super().__init__(message)
        self.code = code


class WasmError(Exception):
    """wasmtime refused an operation (for instance a limit at instantiation)."""


def _raise_for(error: int | None, trap: ctypes.c_void_p) -> None:
    """Raises what wasmtime reported, taking ownership of it (and clearing ``trap``)."""
    if error:
        raise WasmError(str(wasmtime.WasmtimeError._from_ptr(ctypes.cast(error, POINTER(_b.wasmtime_error_t)))))
    if trap.value:
        raised = wasmtime.Trap._from_ptr(ctypes.cast(trap.value, POINTER(_b.wasm_trap_t)))
        trap.value = None
        code = raised.trap_code
        raise WasmTrap(raised.message, None if code is None else code.value)


KEEP_RESIDENT = 256 * 1024


def pooling_engine(max_instances: int, max_memory_bytes: int) -> wasmtime.Engine:
    """An engine with epoch interruption and the pooling allocator.

    Pooling makes a fresh store and instance cost about 8 µs instead of
    about 40 µs; ``max_instances`` bounds the instances alive at once.
    """
    config = wasmtime.Config()
    config.epoch_interruption = True
    pool = _b.wasmtime_pooling_allocation_config_new()
    _b.wasmtime_pooling_allocation_config_total_core_instances_set(pool, max_instances)
    _b.wasmtime_pooling_allocation_config_total_memories_set(pool, max_instances)
    _b.wasmtime_pooling_allocation_config_total_tables_set(pool, max_instances)
    _b.wasmtime_pooling_allocation_config_max_memory_size_set(pool, max_memory_bytes)
    # A slot reused by the next request is cleared with memset up to this size
    # instead of being unmapped and faulted in again: cheaper for modules whose
    # memory starts small, and it bounds what a freed slot keeps resident.
    _b.wasmtime_pooling_allocation_config_linear_memory_keep_resident_set(pool, KEEP_RESIDENT)
    _b.wasmtime_pooling_allocation_config_table_keep_resident_set(pool, KEEP_RESIDENT)
    _b.wasmtime_pooling_allocation_strategy_set(config.ptr(), pool)
    _b.wasmtime_pooling_allocation_config_delete(pool)
    return wasmtime.Engine(config)


def address(pointer: ctypes._Pointer) -> int:
    return ctypes.cast(pointer, c_void_p).value


class Store:
    """A ``wasmtime_store_t`` owned by one request (or one pooled instance)."""

    __slots__ = ("_store", "context", "_trap", "_trap_ref")

    def __init__(self, engine: wasmtime.Engine, on_deadline: ctypes._CFuncPtr) -> None:
        """``on_deadline``: an ``EpochCallback``, kept alive by its owner."""
        self._store = _store_new(address(engine.ptr()), None, _NO_FINALIZER)
        self.context: int = _store_context(self._store)
        _epoch_deadline_callback(self._store, on_deadline, None, _NO_FINALIZER)
        self._trap = c_void_p()
        self._trap_ref = byref(self._trap)

    def limit(self, memory_bytes: int, table_elements: int) -> None:
        # One memory, one table, one instance: a module gets exactly its own.
        _store_limiter(self._store, memory_bytes, table_elements, 1, 1, 1)

    def set_deadline(self, ticks: int) -> None:
        _set_epoch_deadline(self.context, ticks)

    def instantiate(self, pre: wasmtime.InstancePre) -> Instance:
        instance = Instance()
        error = _instantiate_pre(address(pre.ptr()), self.context, byref(instance), self._trap_ref)
        if error or self._trap.value:
            _raise_for(error, self._trap)
        return instance

    def call(self, func_ref: object, slots: ctypes.Array[RawVal], release_gil: bool = False) -> None:
        """Calls a function (``byref`` of its ``Func``); results replace the arguments in ``slots``."""
        call = _call_unchecked_releasing if release_gil else _call_unchecked
        error = call(self.context, func_ref, slots, len(slots), self._trap_ref)
        if error or self._trap.value:
            _raise_for(error, self._trap)

    def export(self, instance: Instance, name: bytes) -> Extern | None:
        found = Extern()
        if not _export_get(self.context, byref(instance), name, len(name), byref(found)):
            return None
        return found

    def close(self) -> None:
        if self._store:
            _store_delete(self._store)
            self._store = None

    def __del__(self) -> None:
        self.close()


def call_in(context: int, func_ref: object, slots: ctypes.Array[RawVal]) -> None:
    """A short ABI call (``cabi_realloc``) from inside a host call, on the caller's context."""
    trap = c_void_p()
    error = _call_unchecked(context, func_ref, slots, len(slots), byref(trap))
    if error or trap.value:
        _raise_for(error, trap)


def caller_context(caller: int) -> int:
    return _caller_context(caller)


def memory_base(context: int, memory_ref: object) -> int:
    """Where a guest's linear memory starts right now: it moves when the guest grows it."""
    return _memory_data(context, memory_ref)


def memory_size(context: int, memory_ref: object) -> int:
    return _memory_data_size(context, memory_ref)


def new_trap(message: str) -> int:
    encoded = message.encode()
    return _trap_new(encoded, len(encoded))


def define_host_func(
    linker: wasmtime.Linker,
    module: str,
    name: str,
    params: list[wasmtime.ValType],
    results: list[wasmtime.ValType],
    callback: ctypes._CFuncPtr,
) -> None:
    """Defines an import through the unchecked callback ABI.

    ``callback`` is a ``HostCallback``; the caller keeps it alive as long as
    the linker. It returns 0, or a trap from ``new_trap`` to stop the guest.
    """
    ty = wasmtime.FuncType(params, results)
    module_b, name_b = module.encode(), name.encode()
    error = _define_unchecked(
        address(linker.ptr()),
        module_b,
        len(module_b),
        name_b,
        len(name_b),
        address(ty.ptr()),
        ctypes.cast(callback, c_void_p),
        None,
        _NO_FINALIZER,
    )
    _raise_for(error, c_void_p())
