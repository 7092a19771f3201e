"""One request's pass through a route's processors.

Ordering: request hooks run in the route's order, response hooks in
reverse order, and the done hook last, in reverse order too.

Local responses: when processor *i* answers (or fails with ``fail_closed``
or ``fallback``), the upstream and the processors after *i* are skipped,
and the response path runs for processors before *i*, in reverse, on the
local response, so a header they add reaches a blocked response too. A
processor that replaces the response in a response phase is the new *i*:
the response path restarts below it on its response.

Bodies: a body nobody asked for streams through untouched. When a
processor on the route buffers a body, the whole body is read first
(bounded by the largest ``max_body_bytes`` of those processors) and every
body hook of that direction sees it as one chunk; while the request body
is read the upstream request is held, so request headers and the upstream
can still change. Otherwise body hooks see each chunk as it passes.

Guest code runs on the guest pool, one hop per phase for the whole chain
and none for a phase no processor on the route takes part in.
A phase is a generator: when a hook returns ``pause`` it yields that
processor's sandbox, the driver (``_drive``) performs its calls on the event
loop (no thread waits), and the phase goes on with ``on-resume`` on a guest
thread. A failure while waiting (the phase's deadline) is thrown into the
phase at the paused hook, where the processor's failure mode applies.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Generator, Iterable, Sequence
from dataclasses import dataclass
from time import perf_counter
from typing import Any, TypeVar

from multidict import CIMultiDict

from .abi import Action, Hook
from .config import FailureMode
from .engine import Runtime
from .exchange import Exchange, LocalResponse
from .executor import GuestPool
from .failures import AbiViolation, Cause, ProcessorFailure
from .processors import Processor
from .sandbox import Sandbox
from .subrequests import CallClient, CallLedger

log = logging.getLogger("wasmgate.chain")

T = TypeVar("T")
Steps = Generator["Sandbox", None, T]
"""A phase run on guest threads: it yields a sandbox whose calls must finish before it goes on."""
BodySource = AsyncIterator[tuple[bytes, bool]]
"""A body as it arrives: chunks, each with whether it is the last."""


class Chain:
    """The processors of one route, in order, and what they ask of bodies."""

    def __init__(self, processors: Sequence[Processor]) -> None:
        self.processors = tuple(processors)
        self.hooks: frozenset[Hook] = frozenset().union(*(p.hooks for p in self.processors))
        self.buffers_request = self._buffer_limit(Hook.REQUEST_BODY)
        self.buffers_response = self._buffer_limit(Hook.RESPONSE_BODY)
        self.hooks_request_body = any(p.wants(Hook.REQUEST_BODY) for p in self.processors)
        self.hooks_response_body = any(p.wants(Hook.RESPONSE_BODY) for p in self.processors)

    def _buffer_limit(self, hook: Hook) -> int:
        """0 when no processor buffers this body, else the most it reads."""
        return max((p.max_body_bytes for p in self.processors if p.buffers and p.wants(hook)), default=0)


class StreamAborted(Exception):
    """A body hook failed after the response started: the client connection must be cut."""


@dataclass
class Outcome:
    """How one processor fared in one request, for the access log."""

    result: str = "skipped"
    seconds: float = 0.0


class ChainRun:
    """Drives one request through a chain; the proxy is a thin adapter over it."""

    def __init__(self, chain: Chain, exchange: Exchange, runtime: Runtime, pool: GuestPool, client: CallClient) -> None:
        self.chain = chain
        self.exchange = exchange
        self.runtime = runtime
        self.pool = pool
        self.client = client
        self.outcomes = {p.name: Outcome() for p in chain.processors}
        self.interrupt: LocalResponse | None = None
        """Set when a streamed request body was stopped by a local response."""
        count = len(chain.processors)
        self._sandboxes: list[Sandbox | None] = [None] * count
        self._checkpoints: list[bytes | None] = [None] * count
        self._ledgers: list[CallLedger | None] = [None] * count
        self._dropped = [False] * count
        self._span = count  # processors [0, span) take part in the response path
        self._reached = count  # processors [0, reached) saw the request: they get the done hook
        self._in_flight: asyncio.Future[Any] | None = None
        self._done = False

    # -- the proxy's calls ---------------------------------------------------

    async def process_request(self, body: bytes | BodySource) -> LocalResponse | bytes | AsyncIterator[bytes]:
        """Runs the request phases; returns a local response or the body to send upstream.

        ``body`` is the whole body when the proxy already has it (one hop
        for every request hook), or a source to stream from.
        """
        if not isinstance(body, bytes) and self.chain.buffers_request:
            body = await _read_all(body, self.chain.buffers_request)
            if body is None:
                return _too_large("request_too_large", 413, self.chain.buffers_request)
        if isinstance(body, bytes):
            out, local = await self._run(REQUEST_PATH, self._whole_request(body), (body, None))
            self.exchange.request_sent = local is None
            return local or out
        phase = self._headers(Hook.REQUEST_HEADERS, self._request_order(), False)
        local = await self._run(REQUEST_HEADERS, phase, None)
        if local is not None:
            return local
        self.exchange.request_sent = True
        if not self.chain.hooks_request_body:
            return (chunk async for chunk, _ in body)
        return self._stream_request(body)

    async def process_response(
        self, status: int, headers: CIMultiDict[str], body: bytes | BodySource
    ) -> bytes | AsyncIterator[bytes]:
        """Runs the response phases; the final status and headers are on ``exchange``."""
        self.exchange.set_response(status, headers)
        if not isinstance(body, bytes) and self.chain.buffers_response:
            body = await _read_all(body, self.chain.buffers_response)
            if body is None:
                return await self.respond_locally(
                    _too_large("upstream_response_too_large", 502, self.chain.buffers_response)
                )
        if isinstance(body, bytes):
            return await self._run(RESPONSE_PATH, self._whole_response(body, True), body)
        phase = self._headers(Hook.RESPONSE_HEADERS, self._response_order(), False)
        local = await self._run(RESPONSE_HEADERS, phase, None)
        if local is not None:
            return await self.respond_locally(local)
        self.exchange.response_sent = True
        if not self.chain.hooks_response_body:
            return (chunk async for chunk, _ in body)
        return self._stream_response(body)

    async def respond_locally(self, response: LocalResponse) -> bytes:
        """Runs the response path on a response the gateway made itself."""
        self._replace(response)
        return await self._run(RESPONSE_PATH, self._whole_response(response.body, True), response.body)

    async def finish(self) -> None:
        """Runs the done hooks if the response path has not, then frees every sandbox."""
        if self._in_flight is not None and not self._in_flight.done():
            with contextlib.suppress(BaseException):  # its outcome was already handled or abandoned
                await self._in_flight
        if not self._done and any(p.wants(Hook.DONE) for p in self.chain.processors):
            with contextlib.suppress(BaseException):
                await self._drive(self._run_done())
        self._close()

    # -- whole bodies (one hop) ----------------------------------------------

    def _whole_request(self, body: bytes) -> Steps[tuple[bytes, LocalResponse | None]]:
        order = self._request_order()
        local = yield from self._headers(Hook.REQUEST_HEADERS, order, not body)
        if local is not None or not body:
            return body, local
        return (yield from self._body(Hook.REQUEST_BODY, order, body, True))

    def _whole_response(self, body: bytes, finish: bool) -> Steps[bytes]:
        """Response phases over a whole body; a local response restarts them below its maker."""
        while True:
            order = self._response_order()
            local = yield from self._headers(Hook.RESPONSE_HEADERS, order, not body)
            if local is None and body:
                body, local = yield from self._body(Hook.RESPONSE_BODY, order, body, True)
            if local is None:
                break
            self._replace(local)
            body = local.body
        if finish:
            yield from self._run_done()
        return body

    # -- streamed bodies (one hop per chunk) ---------------------------------

    async def _stream_request(self, source: BodySource) -> AsyncIterator[bytes]:
        order = self._request_order()
        async for chunk, end in source:
            out, local = await self._drive(self._body(Hook.REQUEST_BODY, order, chunk, end))
            if local is not None:
                # Breaking the upstream request off: a truncated body must not look complete.
                self.interrupt = local
                raise StreamAborted("a request body hook answered while the body streamed upstream")
            if out:
                yield out

    async def _stream_response(self, source: BodySource) -> AsyncIterator[bytes]:
        order = self._response_order()
        async for chunk, end in source:
            out, local = await self._drive(self._body(Hook.RESPONSE_BODY, order, chunk, end))
            if local is not None:
                raise StreamAborted("a response body hook failed after the response started")
            if out:
                yield out

    # -- phases (on guest threads) -------------------------------------------

    def _request_order(self) -> range:
        return range(len(self.chain.processors))

    def _response_order(self) -> Iterable[int]:
        return range(self._span - 1, -1, -1)

    def _headers(self, hook: Hook, order: Iterable[int], end_of_stream: bool) -> Steps[LocalResponse | None]:
        for i in order:
            if self._wants(i, hook):
                _, local = yield from self._call(i, hook, None, end_of_stream)
                if local is not None:
                    return self._answered(i, hook, local)
        return None

    def _body(
        self, hook: Hook, order: Iterable[int], chunk: bytes, end: bool
    ) -> Steps[tuple[bytes, LocalResponse | None]]:
        for i in order:
            if not self._wants(i, hook):
                continue
            processor = self.chain.processors[i]
            if processor.buffers and len(chunk) > processor.max_body_bytes:
                if hook is Hook.REQUEST_BODY:
                    local = _too_large("request_too_large", 413, processor.max_body_bytes)
                else:
                    local = _too_large("upstream_response_too_large", 502, processor.max_body_bytes)
                return b"", self._answered(i, hook, local)
            chunk, local = yield from self._call(i, hook, chunk, end)
            if local is not None:
                return b"", self._answered(i, hook, local)
        return chunk, None

    def _answered(self, i: int, hook: Hook, local: LocalResponse) -> LocalResponse:
        """Processor ``i`` answered: the response path now runs below it."""
        self._span = i
        if hook in (Hook.REQUEST_HEADERS, Hook.REQUEST_BODY):
            self._reached = i + 1
        return local

    def _run_done(self) -> Steps[None]:
        self._done = True
        for i in range(self._reached - 1, -1, -1):
            if self._wants(i, Hook.DONE):
                yield from self._call(i, Hook.DONE, None, True)
        self._close()

    def _wants(self, i: int, hook: Hook) -> bool:
        return not self._dropped[i] and self.chain.processors[i].wants(hook)

    # -- one hook, under the processor's failure mode ------------------------

    def _call(
        self, i: int, hook: Hook, body: bytes | None, end: bool
    ) -> Steps[tuple[bytes | None, LocalResponse | None]]:
        """Runs hook ``hook`` of processor ``i``, pauses included: the body to pass on, or a local response."""
        processor = self.chain.processors[i]
        metrics = processor.metrics.hooks[hook]
        metrics.calls.inc()
        retries = 0 if hook is Hook.DONE else processor.phase_retries
        undoable = processor.failure_mode is FailureMode.FAIL_OPEN or retries
        saved = self.exchange.snapshot() if undoable else None
        calls_before = self._ledger(i).mark()
        started = perf_counter()
        try:
            for retries_left in range(retries, -1, -1):
                try:
                    sandbox, local = yield from self._attempt(i, hook, body, end)
                    break
                except ProcessorFailure as failure:
                    failure.locate(processor.name, hook.phase)
                    if not retries_left or failure.cause not in RETRIED_CAUSES:
                        return self._failed(i, hook, failure, saved, body)
                    self._retry(i, hook, failure, saved)
                    self._ledger(i).rewind(calls_before)
        finally:
            elapsed = perf_counter() - started
            metrics.seconds.observe(elapsed)
            self.outcomes[processor.name].seconds += elapsed
        if local is not None:
            metrics.responded.inc()
            self.outcomes[processor.name].result = "respond"
            return None, local
        metrics.continued.inc()
        if self.outcomes[processor.name].result == "skipped":
            self.outcomes[processor.name].result = "continue"
        return (body if sandbox.replaced_body is None else sandbox.replaced_body), None

    def _attempt(
        self, i: int, hook: Hook, body: bytes | None, end: bool
    ) -> Steps[tuple[Sandbox, LocalResponse | None]]:
        """One try of a hook, pauses included; raises ``ProcessorFailure``."""
        processor = self.chain.processors[i]
        sandbox = self._sandbox(i)
        if processor.buffers and body is not None and len(body) > processor.memory_limit:
            raise ProcessorFailure(
                Cause.MEMORY_LIMIT, f"a {len(body)}-byte body is over its {processor.memory_limit}-byte quota"
            )
        action = sandbox.run(hook, self.exchange, body, end)
        while action == Action.PAUSE:
            if not sandbox.calls.started:
                raise AbiViolation("the hook returned pause with nothing to wait for")
            yield sandbox  # its calls run on the event loop; a failure meanwhile is thrown in here
            action = sandbox.resume(hook)
        return sandbox, None if hook is Hook.DONE else _judge(sandbox, action)

    def _retry(self, i: int, hook: Hook, failure: ProcessorFailure, saved: Any) -> None:
        """Undoes a failed try of a phase; the next try gets a fresh instance and the checkpoint."""
        processor = self.chain.processors[i]
        processor.metrics.hooks[hook].retried.inc()
        log.warning(
            "%s (request %s, trying the phase again)",
            failure,
            self.exchange.facts.request_id,
            extra={"processor": processor.name, "cause": failure.cause.value},
        )
        self._discard(i)
        self.exchange.restore(saved)

    def _sandbox(self, i: int) -> Sandbox:
        """The processor's sandbox for this request, started on first use."""
        sandbox = self._sandboxes[i]
        if sandbox is None:
            processor = self.chain.processors[i]
            sandbox = processor.pool.take() if processor.pool is not None else None
            started = sandbox is None
            try:
                if started:
                    sandbox = Sandbox(self.runtime, processor)
                sandbox.checkpoint = self._checkpoints[i]
                sandbox.calls = self._ledger(i)
                if started:  # a pooled instance was initialized once, when it started
                    sandbox.init(processor.config_json)
            except ProcessorFailure as failure:
                raise failure.locate(processor.name, Hook.INIT.phase) from None
            self._sandboxes[i] = sandbox
        return sandbox

    def _failed(
        self, i: int, hook: Hook, failure: ProcessorFailure, saved: Any, body: bytes | None
    ) -> tuple[bytes | None, LocalResponse | None]:
        processor = self.chain.processors[i]
        processor.metrics.hooks[Hook[failure.phase.upper()]].error(failure.cause)
        self.outcomes[processor.name].result = f"error:{failure.cause.value}"
        self._discard(i)
        self._dropped[i] = True
        mode = processor.failure_mode
        log.warning(
            "%s (request %s, %s)",
            failure,
            self.exchange.facts.request_id,
            mode.value,
            extra={"processor": processor.name, "cause": failure.cause.value},
        )
        if hook is Hook.DONE or mode is FailureMode.FAIL_OPEN:
            if saved is not None:
                self.exchange.restore(saved)
            return body, None
        if mode is FailureMode.FALLBACK:
            return None, processor.fallback
        return None, LocalResponse.json_error(
            503,
            {
                "type": "processor_failed",
                "processor": processor.name,
                "phase": failure.phase,
                "cause": failure.cause.value,
                "message": failure.detail,
            },
        )

    # -- helpers -------------------------------------------------------------

    def _ledger(self, i: int) -> CallLedger:
        """Processor ``i``'s calls in this request, numbered across its instances."""
        ledger = self._ledgers[i]
        if ledger is None:
            processor, request_id = self.chain.processors[i], self.exchange.facts.request_id
            ledger = CallLedger(processor.subrequests, processor.metrics.subrequests, processor.name, request_id)
            self._ledgers[i] = ledger
        return ledger

    def _discard(self, i: int) -> None:
        """Frees processor ``i``'s sandbox after a failure, keeping its checkpoint for a later one."""
        sandbox = self._sandboxes[i]
        if sandbox is not None:
            self._checkpoints[i] = sandbox.checkpoint
            sandbox.close()
            self._sandboxes[i] = None

    def _replace(self, response: LocalResponse) -> None:
        self.exchange.set_response(response.status, CIMultiDict(response.headers))

    async def _run(self, hooks: frozenset[Hook], steps: Steps[T], untouched: T) -> T:
        """Drives ``steps``; when no processor takes any of ``hooks``, returns ``untouched`` with no hop."""
        if self.chain.hooks.isdisjoint(hooks):
            steps.close()
            return untouched
        return await self._drive(steps)

    async def _drive(self, steps: Steps[T]) -> T:
        """Runs a phase on guest threads; while a processor waits on its calls, they run here."""
        failure: ProcessorFailure | None = None
        while True:
            # Shielded: if the request is cancelled, the guest thread still finishes
            # with this run's sandboxes before finish() may free them.
            self._in_flight = self.pool.run(_advance, steps, failure)
            finished, value = await asyncio.shield(self._in_flight)
            if finished:
                return value
            failure = await self._perform_calls(value)

    async def _perform_calls(self, sandbox: Sandbox) -> ProcessorFailure | None:
        """Runs the calls a paused processor waits on; the failure to throw into its phase, if any."""
        started = len(sandbox.calls.started)
        if not await self.client.perform(sandbox.calls, self.exchange.depth + 1, sandbox.phase_deadline):
            return ProcessorFailure(
                Cause.TIMEOUT,
                f"the phase's deadline passed with {started} sub-request(s) started; unfinished ones were cancelled",
            )
        try:
            sandbox.check_held_bytes()
        except ProcessorFailure as failure:
            return failure
        return None

    def _close(self) -> None:
        """The request is over: its sandboxes go back to their pools, or are discarded."""
        for i, sandbox in enumerate(self._sandboxes):
            if sandbox is not None:
                processor = self.chain.processors[i]
                processor.metrics.note_memory(sandbox.peak_memory)
                if processor.pool is None or not processor.pool.give_back(sandbox):
                    sandbox.close()
                self._sandboxes[i] = None


REQUEST_HEADERS = frozenset({Hook.REQUEST_HEADERS})
RESPONSE_HEADERS = frozenset({Hook.RESPONSE_HEADERS})
REQUEST_PATH = frozenset({Hook.REQUEST_HEADERS, Hook.REQUEST_BODY})
RESPONSE_PATH = frozenset({Hook.RESPONSE_HEADERS, Hook.RESPONSE_BODY, Hook.DONE})
"""The hooks of each phase group, for skipping a hop nobody needs (``ChainRun._run``)."""

RETRIED_CAUSES = frozenset({Cause.TRAP, Cause.TIMEOUT, Cause.MEMORY_LIMIT})
"""Failures a fresh instance may not repeat; a refused config or a broken ABI it would."""


def _judge(sandbox: Sandbox, action: int) -> LocalResponse | None:
    """What a hook's returned action means, or the ABI rule it broke."""
    if action == Action.CONTINUE:
        if sandbox.local_response is not None:
            raise AbiViolation("the hook called send-response but returned continue")
        return None
    if action == Action.RESPOND:
        if sandbox.local_response is None:
            raise AbiViolation("the hook returned respond without calling send-response")
        return sandbox.local_response
    raise AbiViolation(f"the hook returned {action}, which is not an action")


def _advance(steps: Steps[T], failure: ProcessorFailure | None) -> tuple[bool, Any]:
    """Runs a phase on to its next pause (False, the paused sandbox) or its end (True, its value)."""
    try:
        return False, steps.throw(failure) if failure is not None else next(steps)
    except StopIteration as end:
        return True, end.value


def _too_large(kind: str, status: int, limit: int) -> LocalResponse:
    return LocalResponse.json_error(status, {"type": kind, "message": f"the body is larger than {limit} bytes"})


async def _read_all(source: BodySource, limit: int) -> bytes | None:
    """The whole body, or None when it passes ``limit`` bytes."""
    parts = bytearray()
    async for chunk, _ in source:
        parts += chunk
        if len(parts) > limit:
            return None
    return bytes(parts)
