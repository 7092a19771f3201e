"""One processor instance serving one request: its store, memory and calls.

A sandbox is created for a request (a fresh store and instance: nothing a
request leaves in guest memory reaches the next one), runs that request's
hooks on guest threads, and is discarded. Any failure discards it at once
and is reported with a precise cause:

- ``timeout``: a hook ran past its deadline. The deadline covers copying
  the hook's data in, the call and its post-return, but not the time a
  long guest waits for the event loop to take its turn (below); the CPU is
  cut by epoch interruption, so a guest spinning forever costs one deadline.
- ``memory_limit``: the guest's memory passed its quota. wasmtime's limiter
  is set to twice the quota so that a guest running out of memory grows
  past the quota, and is failed for exactly that, instead of crashing in a
  way that looks like any other trap. The host never holds more than that.
- ``trap``, ``abi_violation``, ``init_failed``: see ``failures.Cause``.

A hook that returns ``pause`` is resumed (``resume``) once its calls have
finished, within what is left of the same phase's deadline.

The GIL: a hook call keeps it, since most hooks take microseconds and
handing the GIL back and forth costs more (see ``ffi``). A guest that
runs on through a whole epoch tick gives the event loop a turn on every
further tick, so a long guest slows the loop down but never stops it; and
the processor's next calls of that hook (``RELEASING_CALLS``) release the
GIL, so a hook known to run long runs in parallel with the loop.
"""

from __future__ import annotations

import ctypes
import struct
import threading
import time
from typing import TYPE_CHECKING

from . import ffi
from .abi import RESUME_EXPORT, WASM_PAGE, GuestMemory, Hook, Phases
from .exchange import Exchange, LocalResponse
from .executor import give_loop_a_turn
from .failures import AbiViolation, Cause, ProcessorFailure
from .subrequests import CallLedger

if TYPE_CHECKING:
    from .engine import Runtime
    from .processors import Processor

TABLE_ELEMENTS = 100_000
"""Bounds a module's function table: generous for Rust and Go, finite for a bomb."""

_active = threading.local()


def active() -> Sandbox | None:
    """The sandbox whose guest code is running on this thread, for host calls."""
    return getattr(_active, "sandbox", None)


class Sandbox:
    __slots__ = (
        "processor",
        "exchange",
        "hook",
        "replaced_body",
        "local_response",
        "fault",
        "in_host_call",
        "peak_memory",
        "log_lines",
        "calls",
        "checkpoint",
        "phase_deadline",
        "gil_released",
        "ticks_run",
        "requests_served",
        "output",
        "_store",
        "_instance",
        "_memory",
        "_realloc",
        "_funcs",
        "_slots",
        "_alloc_slots",
    )

    def __init__(self, runtime: Runtime, processor: Processor) -> None:
        self.processor = processor
        self.exchange: Exchange | None = None
        self.hook: Hook | None = None
        self.replaced_body: bytes | None = None
        self.local_response: LocalResponse | None = None
        self.fault: ProcessorFailure | None = None
        self.in_host_call = False
        self.peak_memory = 0
        self.log_lines = 0
        self.calls: CallLedger | None = None  # set when the sandbox serves a request
        self.checkpoint: bytes | None = None  # the processor's, in this request: it outlives a failed instance
        self.phase_deadline = 0.0  # time.monotonic() when the running phase must be over
        self.gil_released = False  # by the running hook call
        self.ticks_run = 0  # epoch ticks the running hook call has seen
        self.requests_served = 0  # by a pooled instance
        self.output: dict[int, bytearray] = {}  # stdout and stderr (WASI), until a line is whole
        self._memory: object | None = None  # byref of the instance's memory
        self._funcs: dict[bytes, object] = {}  # byref of each function called
        self._slots = (ffi.RawVal * 4)()
        self._alloc_slots = (ffi.RawVal * 4)()  # cabi_realloc's, never in use twice at once
        self._store: ffi.Store | None = ffi.Store(runtime.engine, _on_epoch_deadline)
        self._store.limit(2 * processor.memory_limit, TABLE_ELEMENTS)
        self._enter(Hook.INIT, time.monotonic() + processor.timeouts[Hook.INIT])
        try:
            try:
                self._instance = self._store.instantiate(processor.module.pre)
            except ffi.WasmError as error:
                raise _instantiation_failure(str(error)) from None
            self._memory = ctypes.byref(self._store.export(self._instance, b"memory").of.memory)
            self._realloc = self._func(b"cabi_realloc")
            if processor.module.has_initialize:
                self._call_hook(Hook.INIT, self._func(b"_initialize"))
        except BaseException as error:
            raise self._failure(error, Hook.INIT) from None
        finally:
            self._leave()

    @property
    def alive(self) -> bool:
        return self._store is not None

    def close(self) -> None:
        """Discards the instance; its pooling slot is free again."""
        if self._store is not None:
            self._store.close()
            self._store = None

    def end_request(self) -> None:
        """Forgets the request it served, before a pooled instance serves another."""
        self.exchange = None
        self.calls = None
        self.checkpoint = None
        self.output.clear()
        self.replaced_body = None
        self.local_response = None
        self.log_lines = 0

    def memory(self, caller_context: int | None = None) -> GuestMemory:
        """A view of guest memory: for the host between calls, or for a host call on its caller's context."""
        store = self._store if caller_context is None else None
        context = self._store.context if caller_context is None else caller_context
        return GuestMemory(context, self._memory, self._realloc, self._alloc_slots, store)

    # -- hooks ---------------------------------------------------------------

    def init(self, config: bytes) -> int:
        """Runs the guest's ``init`` with its JSON config; returns its phase bits."""
        self._enter(Hook.INIT, time.monotonic() + self.processor.timeouts[Hook.INIT])
        try:
            slots = self._slots
            slots[0].u32 = self.memory().alloc(config, "the config")
            slots[1].u32 = len(config)
            self._call_hook(Hook.INIT, self._func(Hook.INIT.export))
            result = slots[0].u32
            memory = self.memory()
            tag, payload, length = struct.unpack("<BxxxII", memory.read(result, 12, "init's result"))
            if tag > 1:
                raise AbiViolation(f"init returned result tag {tag}")
            error = memory.string(payload, length, "init's error") if tag == 1 else None
            self._post_return(Hook.INIT, result)
        except BaseException as failure:
            raise self._failure(failure, Hook.INIT) from None
        finally:
            self._leave()
        self._check_memory()
        if error is not None:
            raise ProcessorFailure(Cause.INIT_FAILED, error)
        return payload & Phases.ALL  # bits past the flags are ignored, as in the canonical ABI

    def run(self, hook: Hook, exchange: Exchange, body: bytes | None = None, end_of_stream: bool = True) -> int:
        """Runs one hook; returns its raw action for the chain to judge.

        Afterwards ``replaced_body`` and ``local_response`` hold what the
        hook set through host calls.
        """
        self.exchange = exchange
        self.replaced_body = None
        self.local_response = None
        self._enter(hook, time.monotonic() + self.processor.timeouts[hook])
        slots = self._slots
        try:
            if hook.takes_body:
                slots[0].u32 = self.memory().alloc(body, "the body")
                slots[1].u32 = len(body)
                slots[2].u32 = end_of_stream
            else:
                slots[0].u32 = end_of_stream  # ignored by on-done
            self._call_hook(hook, self._func(hook.export))
            action = 0 if hook is Hook.DONE else slots[0].u32  # on-done returns nothing
            self._post_return(hook, action)
        except BaseException as failure:
            raise self._failure(failure, hook) from None
        finally:
            self._leave()
        self._check_memory()
        return action

    def resume(self, hook: Hook) -> int:
        """Runs ``on-resume`` for a paused ``hook``, in what is left of its deadline; returns the raw action."""
        if time.monotonic() >= self.phase_deadline:
            self.close()
            raise _deadline_passed(self.processor.timeouts[hook], hook)
        self._enter(hook, self.phase_deadline)
        try:
            self._call_hook(hook, self._func(RESUME_EXPORT))
            action = self._slots[0].u32
        except BaseException as failure:
            raise self._failure(failure, hook) from None
        finally:
            self._leave()
        self._check_memory()
        return action

    def check_held_bytes(self) -> None:
        """Fails the processor when its guest memory and what the host holds for it pass its quota."""
        held = self.calls.held_bytes if self.calls is not None else 0
        total, limit, mib = self.memory_size() + held, self.processor.memory_limit, 1 << 20
        if total > limit:
            self.close()
            detail = f"guest memory and {held / mib:.1f} MiB of sub-requests make {total / mib:.1f} MiB"
            raise ProcessorFailure(Cause.MEMORY_LIMIT, f"{detail}, over its {limit / mib:.1f} MiB quota")

    # -- guest calls ---------------------------------------------------------

    def _enter(self, hook: Hook, deadline: float) -> None:
        """Starts a guarded region: one deadline (``time.monotonic()``), host calls allowed for ``hook``."""
        self._store.set_deadline(1)  # the next tick calls _on_epoch_deadline
        self.phase_deadline = deadline
        self.hook = hook
        self.fault = None
        _active.sandbox = self

    def _leave(self) -> None:
        _active.sandbox = None
        self.hook = None

    def _call_hook(self, hook: Hook, func: object) -> None:
        """Calls a hook's export, keeping the GIL unless a recent call of this hook ran long."""
        releasing = self.processor.releasing_calls
        left = releasing.get(hook, 0)
        self.gil_released = left > 0
        self.ticks_run = 0
        try:
            self._store.call(func, self._slots, self.gil_released)
        finally:
            if self.ticks_run >= LONG_CALL_TICKS:
                releasing[hook] = RELEASING_CALLS
            elif left:
                releasing[hook] = left - 1

    def _post_return(self, hook: Hook, result: int) -> None:
        if hook.post_return in self.processor.module.post_returns:
            self._slots[0].u32 = result  # ignored by on-done's, which takes nothing
            self._store.call(self._func(hook.post_return), self._slots)

    def _func(self, name: bytes) -> object:
        func = self._funcs.get(name)
        if func is None:
            found = self._store.export(self._instance, name)
            if found is None or found.kind != ffi.EXTERN_FUNC:
                raise AbiViolation(f"the instance has no function export {name.decode()!r}")
            func = self._funcs[name] = ctypes.byref(found.of.func)
        return func

    # -- failures ------------------------------------------------------------

    def memory_size(self) -> int:
        return ffi.memory_size(self._store.context, self._memory) if self._memory is not None else 0

    def _check_memory(self) -> None:
        size = self.memory_size()
        self.peak_memory = max(self.peak_memory, size)
        if size > self.processor.memory_limit:
            self.close()
            raise ProcessorFailure(Cause.MEMORY_LIMIT, self._memory_detail(size))

    def _memory_detail(self, size: int) -> str:
        mib = 1 << 20
        return f"guest memory grew to {size / mib:.1f} MiB, over its {self.processor.memory_limit / mib:.1f} MiB quota"

    def _failure(self, error: BaseException, hook: Hook) -> BaseException:
        """The precise cause of what stopped the guest; the instance is discarded."""
        if self._store is None:  # already failed and closed
            return error
        # A host call that stopped the guest left its precise failure; wasmtime
        # reports the unwind as a trap or as an error depending on the path.
        unwound = isinstance(error, (ffi.WasmTrap, ffi.WasmError))
        failure = self.fault if unwound and self.fault is not None else error
        if isinstance(failure, (ffi.WasmTrap, ffi.WasmError)):
            size = self.memory_size()
            self.peak_memory = max(self.peak_memory, size)
            limit = self.processor.memory_limit
            if size > limit or size + WASM_PAGE > 2 * limit:
                failure = ProcessorFailure(Cause.MEMORY_LIMIT, self._memory_detail(size))
            else:
                failure = ProcessorFailure(Cause.TRAP, _trap_summary(str(failure)))
        self.close()
        return failure


LONG_CALL_TICKS = 2
"""A call that sees this many epoch ticks ran for a whole tick at least; one it may merely have straddled."""
RELEASING_CALLS = 1000
"""After a long call of a hook, the processor's next this many calls of it release the GIL."""
LOOP_TURN_TIMEOUT = 0.05
"""How long a long guest waits for the event loop to take its turn before it goes on anyway."""


@ffi.EpochCallback
def _on_epoch_deadline(context: int, data: int, next_deadline: ctypes._Pointer, kind: ctypes._Pointer) -> int:
    """Runs on every epoch tick while a guest runs: stops it past its deadline, else lets the event loop run."""
    sandbox = active()
    if sandbox is None:
        return ffi.error("a guest ran outside a sandbox's guarded region")
    if time.monotonic() >= sandbox.phase_deadline:
        sandbox.fault = _deadline_passed(sandbox.processor.timeouts[sandbox.hook], sandbox.hook)
        return ffi.error("the guest's deadline passed")
    sandbox.ticks_run += 1
    if sandbox.ticks_run >= LONG_CALL_TICKS and not sandbox.gil_released:
        waiting = time.monotonic()
        give_loop_a_turn(LOOP_TURN_TIMEOUT)
        # Time spent waiting for the event loop is the gateway's, not the guest's: a busy loop must
        # not push a hook past its deadline.
        sandbox.phase_deadline += time.monotonic() - waiting
    next_deadline[0] = 1
    kind[0] = ffi.DEADLINE_CONTINUE
    return 0


def _deadline_passed(timeout: float, hook: Hook) -> ProcessorFailure:
    return ProcessorFailure(Cause.TIMEOUT, f"{hook.phase} ran past its {timeout * 1000:g} ms deadline")


def _instantiation_failure(message: str) -> ProcessorFailure:
    if "concurrent" in message:  # the pooling allocator has no free slot
        return ProcessorFailure(Cause.OVERLOADED, f"no free instance slot: {message}")
    if "memory" in message and ("limit" in message or "minimum" in message):
        return ProcessorFailure(Cause.MEMORY_LIMIT, f"the module's initial memory is over its quota: {message}")
    return ProcessorFailure(Cause.TRAP, f"instantiation failed: {message}")


def _trap_summary(message: str) -> str:
    """wasmtime's trap text, shortened to its cause and innermost frame."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    cause = next((line for line in reversed(lines) if line.startswith("wasm trap:")), lines[-1] if lines else "")
    frame = next((line for line in lines if line[:1].isdigit() and " - " in line), "")
    return f"{cause} (in {frame.split(' - ', 1)[1]})" if frame else cause
