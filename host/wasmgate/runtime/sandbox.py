"""One processor instance, driven as a coroutine on the event loop.

The core runs the guest; this adapter drives its poll protocol: a call that
finishes at once (nearly every hook) costs one crossing into Rust; one that
runs long yields to the ``Scheduler`` at epoch ticks; one whose host call
needs the gateway (shared state, a new metric) gets its answer from the
processor's ``Host`` on the loop, and goes on. Log lines and metric records
the guest made are drained after each call. A failure raises
``ProcessorFailure`` with the cause the core found; the instance is gone.

Deadlines are wall-clock, from the call of a hook to its end (``on-resume``
runs in what is left of it): time spent waiting for a turn, for the state
backend or for sub-requests is the phase's time.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from .. import _core
from .abi import Hook, LogLevel, MetricKind
from .failures import Cause, ProcessorFailure
from .host import Host

if TYPE_CHECKING:
    from .engine import Runtime
    from .scheduler import Scheduler

guest_log = logging.getLogger("wasmgate.guest")
log = logging.getLogger("wasmgate.sandbox")

_LEVELS: dict[int, int] = {
    LogLevel.TRACE: logging.DEBUG,
    LogLevel.DEBUG: logging.DEBUG,
    LogLevel.INFO: logging.INFO,
    LogLevel.WARN: logging.WARNING,
    LogLevel.ERROR: logging.ERROR,
}
"""Python's level for each WIT ``log-level`` (the core checked it is one)."""


class Sandbox:
    __slots__ = ("_core", "_runtime", "_host", "_scheduler", "name", "request_id", "requests_served")

    def __init__(self, runtime: Runtime, guest: _core.Guest, host: Host, core: _core.Sandbox | None = None) -> None:
        """A new, unstarted instance (``start`` it), or ``core``, one the core started already."""
        self._core = core or _core.Sandbox(runtime.engine, guest)
        self._runtime = runtime
        self._host = host
        self._scheduler: Scheduler | None = None  # the event loop's, from ``bind``
        self.name = guest.name
        self.request_id = "-"
        self.requests_served = 0  # by a pooled instance

    @classmethod
    def prepared(cls, runtime: Runtime, guest: _core.Guest, host: Host) -> Sandbox | None:
        """A started instance nobody has used, made ahead of need, if one is ready (``Guest.fill``)."""
        core = _core.Sandbox.prepared(guest)
        return None if core is None else cls(runtime, guest, host, core)

    # -- calls -------------------------------------------------------------------------

    async def start(self) -> int:
        """Makes the instance and runs ``init`` with the processor's config; returns the phases it chose."""
        scheduler = self._scheduler or self._running_scheduler()
        free = scheduler.free
        status = self._core.start(free)
        return status if status < _core.EVENTS else await self._settle(status, scheduler, free)

    def start_blocking(self) -> int:
        """``start`` for a caller with no event loop (loading processors): the guest runs without the GIL."""
        status = self._core.start_blocking()
        while True:
            if status & _core.EVENTS:
                self._drain()
            if status & _core.WAITING:
                request = self._core.request()
                if request is None or not self._answer_now(request):
                    self._core.answer_failure(Cause.HOST_ERROR, f"{request!r} needs a request")
                status = self._core.poll_blocking()
            elif status & _core.FAILED:
                raise self._failure()
            else:
                return status & _core.VALUE

    async def run(self, hook: Hook, body: bytes | None = None, end_of_stream: bool = True) -> int:
        """Runs one hook; returns its action (checked by the core: continue, respond or pause)."""
        scheduler = self._scheduler or self._running_scheduler()
        free = scheduler.free
        status = self._core.call(hook.value, body, end_of_stream, free)
        if status < _core.EVENTS:  # finished, nothing to drain: nearly every hook
            return status
        return await self._settle(status, scheduler, free)

    async def resume(self, hook: Hook) -> int:
        """Runs ``on-resume`` for a paused ``hook``, in what is left of its deadline; returns the action."""
        scheduler = self._scheduler or self._running_scheduler()
        free = scheduler.free
        status = self._core.resume(hook.value, free)
        return status if status < _core.EVENTS else await self._settle(status, scheduler, free)

    def _running_scheduler(self) -> Scheduler:
        self._scheduler = self._runtime.scheduler()
        return self._scheduler

    async def _settle(self, status: int, scheduler: Scheduler, ran: bool) -> int:
        """Drives a call that yielded (or, unless it ``ran``, waits for a turn to run), waits for the
        gateway, failed or left events, to its end."""
        if ran:
            scheduler.ran(status)
        while True:
            if status & _core.EVENTS:
                self._drain()
            if status & _core.YIELDED:
                status = await scheduler.wait(self._core, ran)
            elif status & _core.WAITING:
                await self._answer(self._core.request())
                ran = scheduler.free
                status = scheduler.ran(self._core.poll()) if ran else _core.YIELDED
            elif status & _core.FAILED:
                raise self._failure()
            else:
                return status & _core.VALUE

    # -- what the guest asks of the gateway ----------------------------------------------

    async def _answer(self, request: tuple[object, ...] | None) -> None:
        if request is None or self._answer_now(request):
            return
        core, host = self._core, self._host
        try:
            match request:
                case ("counter-add", bytes(key), int(delta), int(window_ms), limit, float(timeout)):
                    value, reset_ms, applied = await host.counter_add(
                        key, delta, window_ms, limit if isinstance(limit, int) else None, timeout
                    )
                    core.answer_counter(value, reset_ms, applied)
                case ("kv-get", bytes(key), float(timeout)):
                    core.answer_value(await host.kv_get(key, timeout))
                case ("kv-set", bytes(key), bytes(value), int(ttl_ms), float(timeout)):
                    await host.kv_set(key, value, ttl_ms, timeout)
                    core.answer_done()
                case ("kv-delete", bytes(key), float(timeout)):
                    await host.kv_delete(key, timeout)
                    core.answer_done()
                case _:
                    core.answer_failure(Cause.HOST_ERROR, f"the host cannot answer {request[0]!r}")
        except ProcessorFailure as failure:
            core.answer_failure(failure.cause, failure.detail)
        except Exception:  # a bug in the gateway: it fails this call, not the request's handler
            log.exception("processor %s, request %s: answering %r failed", self.name, self.request_id, request[0])
            core.answer_failure(Cause.HOST_ERROR, f"the host failed to answer {request[0]!r}")

    def _answer_now(self, request: tuple[object, ...]) -> bool:
        """Answers what needs no waiting; False for the rest."""
        match request:
            case ("flush",):
                self._drain()
                self._core.answer_done()
            case ("define-metric", int(metric), int(kind), str(name), str(help_text), list(labels), list(buckets)):
                try:
                    self._host.define_metric(metric, MetricKind(kind), name, help_text, labels, buckets)
                except ValueError as refused:
                    self._core.answer_refused(str(refused))
                else:
                    self._core.answer_done()
            case _:
                return False
        return True

    def _drain(self) -> None:
        lines, records, dropped = self._core.drain()
        extra = {"processor": self.name, "request_id": self.request_id}
        for level, text, truncated in lines:
            guest_log.log(
                _LEVELS[level], "[%s] %s%s", self.name, text, " [truncated]" if truncated else "", extra=extra
            )
        if records:
            self._host.record_metrics(records)
        if dropped:
            self._host.dropped_log_lines(dropped)

    def _failure(self) -> ProcessorFailure:
        cause, detail = self._core.failure() or (Cause.HOST_ERROR, "the sandbox stopped without a cause")
        return ProcessorFailure(Cause(cause), detail)  # guest text in it escaped by the core

    # -- the request it serves -------------------------------------------------------------

    def bind(self, exchange: _core.Exchange, index: int, request_id: str, scheduler: Scheduler) -> None:
        """Serves the request of ``exchange`` as processor ``index`` of its route, on ``scheduler``'s loop."""
        self._core.bind(exchange, index)
        self.request_id = request_id
        self._scheduler = scheduler

    def unbind(self) -> None:
        """Forgets the request it served, before a pooled instance serves another."""
        self._core.unbind()
        self.request_id = "-"

    def take_body(self) -> bytes | None:
        """The body the last hook set with ``replace-body``, if it did."""
        return self._core.take_body()

    def take_response(self) -> tuple[int, list[tuple[str, str]], bytes] | None:
        """The response the last hook set with ``send-response``."""
        return self._core.take_response()

    def check_held(self) -> None:
        """Fails the processor when its memory and its sub-requests' answers pass its quota."""
        if self._core.check_held() & _core.FAILED:
            raise self._failure()

    @property
    def quota_left(self) -> int:
        """Bytes the guest may still take: what its sub-requests' answers may use."""
        return self._core.quota_left

    @property
    def remaining(self) -> float:
        """Seconds left of the phase's deadline."""
        return self._core.remaining

    # -- the instance ------------------------------------------------------------------------

    @property
    def peak_memory(self) -> int:
        return self._core.peak_memory

    @property
    def memory_size(self) -> int:
        return self._core.memory_size

    def init_image(self) -> bytes | None:
        """The processor's module rewritten to start as this instance is now: it ran ``init`` and served
        no request. None when the module cannot be snapshotted."""
        return self._core.init_image()

    def close(self) -> None:
        """Discards the instance; its slot is free again."""
        self._core.close()
