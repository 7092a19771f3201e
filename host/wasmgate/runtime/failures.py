"""Why a processor failed: one precise cause per failure.

The core decides the cause (by a trap's code, or by the failure a host call
or the memory limiter returned), never by a message's text. A failure ends
the processor's sandbox (its instance is discarded) and the request follows
the processor's failure mode; the gateway itself goes on.
"""

from __future__ import annotations

import enum


class Cause(enum.StrEnum):
    TIMEOUT = "timeout"
    """The phase ran past its deadline (CPU cut by epoch interruption)."""
    MEMORY_LIMIT = "memory_limit"
    """The guest's memory or the bytes held for it passed its quota."""
    TRAP = "trap"
    """The guest trapped: unreachable, out-of-bounds access, stack overflow..."""
    ABI_VIOLATION = "abi_violation"
    """The guest broke the ABI: a bad pointer, length, UTF-8 or argument, or a
    host call that is not allowed where it was made."""
    INIT_FAILED = "init_failed"
    """The guest's ``init`` returned an error for its config."""
    OVERLOADED = "overloaded"
    """No sandbox could be had: every instance slot of the engine is in use, or the kernel refused the
    memory mapping of a new one."""
    STATE_UNAVAILABLE = "state_unavailable"
    """The shared state's backend failed or did not answer in time."""
    STATE_QUOTA = "state_quota"
    """A write would take the processor's shared state past its ``state_quota`` of keys or bytes."""
    HOST_ERROR = "host_error"
    """The host itself failed serving the processor (a bug in wasmgate): the processor's
    request fails by its failure mode, the gateway goes on."""


class ProcessorFailure(Exception):
    """A processor failed one request; ``where`` is filled in as it propagates."""

    def __init__(self, cause: Cause, detail: str) -> None:
        super().__init__(detail)
        self.cause = cause
        self.detail = detail
        self.processor = ""
        self.phase = ""

    def locate(self, processor: str, phase: str) -> ProcessorFailure:
        self.processor = self.processor or processor
        self.phase = self.phase or phase
        return self

    def __str__(self) -> str:
        where = f"processor {self.processor!r} in {self.phase}: " if self.processor else ""
        return f"{where}{self.cause.value}: {self.detail}"
