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

Guest code runs on the event loop, as coroutines (see ``runtime``). When a
hook returns ``pause``, its processor's calls run here, and the phase goes
on with ``on-resume``; a failure meanwhile (the phase's deadline) fails
the paused hook, where the processor's failure mode applies.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from time import perf_counter
from typing import TypeVar

from multidict import CIMultiDict

from ..config import FailureMode
from ..runtime import Action, Cause, Exchange, Hook, ProcessorFailure, Runtime, Sandbox, Scheduler, Snapshot
from .exchange import LocalResponse, RequestFacts
from .processors import Processor
from .subrequests import CallClient, Caller

log = logging.getLogger("wasmgate.chain")

T = TypeVar("T")
BodySource = AsyncIterator[tuple[bytes, bool]]
"""A body as it arrives: chunks, each with whether it is the last."""


class Chain:
    """The processors of one route, in order, and what they ask of bodies."""

    def __init__(self, processors: Sequence[Processor]) -> None:
        self.processors = tuple(processors)
        self.hooks: frozenset[Hook] = frozenset().union(*(p.hooks for p in self.processors))
        takers = {hook: tuple(i for i, p in enumerate(self.processors) if p.wants(hook)) for hook in Hook}
        self.order = {hook: indices if hook in REQUEST_PATH else indices[::-1] for hook, indices in takers.items()}
        """The processors that take part in each hook, in the order they run: request hooks in route
        order, the others in reverse."""
        self.buffers_request = self._buffer_limit(Hook.REQUEST_BODY)
        self.buffers_response = self._buffer_limit(Hook.RESPONSE_BODY)
        self.hooks_request_body = any(p.wants(Hook.REQUEST_BODY) for p in self.processors)
        self.hooks_response_body = any(p.wants(Hook.RESPONSE_BODY) for p in self.processors)

    def _buffer_limit(self, hook: Hook) -> int:
        """0 when no processor buffers this body, else the most it reads."""
        return max((p.max_body_bytes for p in self.processors if p.buffers and p.wants(hook)), default=0)


class StreamAborted(Exception):
    """A body hook answered while its body streamed: the stream is cut, so a truncated body never looks whole.

    On the request path the proxy answers with ``ChainRun.interrupt``; on the response path the status
    line is gone, and the client connection is cut."""


@dataclass
class Outcome:
    """How one processor fared in one request, for the access log."""

    result: str = "skipped"
    seconds: float = 0.0


class ChainRun:
    """Drives one request through a chain; the proxy is a thin adapter over it."""

    def __init__(
        self,
        chain: Chain,
        facts: RequestFacts,
        exchange: Exchange,
        runtime: Runtime,
        scheduler: Scheduler,
        client: CallClient,
        depth: int = 0,
    ) -> None:
        """``scheduler``: the serving event loop's (``Runtime.scheduler``). ``depth``: how many gateways'
        sub-requests led to this request."""
        self.chain = chain
        self.facts = facts
        self.exchange = exchange
        self.runtime = runtime
        self.client = client
        self.depth = depth
        self._scheduler = scheduler
        self._outcomes = [Outcome() for _ in chain.processors]
        self.interrupt: LocalResponse | None = None
        """Set when a streamed request body was stopped by a local response."""
        count = len(chain.processors)
        self._sandboxes: list[Sandbox | None] = [None] * count
        self._dropped = [False] * count
        self._retrying = [False] * count  # its next instance must start bound, to see the checkpoint in init
        self._span = count  # processors [0, span) take part in the response path
        self._reached = count  # processors [0, reached) saw the request: they get the done hook
        self._done = False

    @property
    def outcomes(self) -> dict[str, Outcome]:
        """How each processor fared, by name."""
        return {p.name: outcome for p, outcome in zip(self.chain.processors, self._outcomes, strict=True)}

    # -- the proxy's calls ---------------------------------------------------

    async def process_request(self, body: bytes | BodySource) -> LocalResponse | bytes | AsyncIterator[bytes]:
        """Runs the request phases; returns a local response or the body to send upstream.

        ``body`` is the whole body when the proxy already has it, or a source to stream from.
        """
        if not isinstance(body, bytes) and self.chain.buffers_request:
            whole = await _read_all(body, self.chain.buffers_request)
            if whole is None:
                return _too_large("request_too_large", 413, self.chain.buffers_request)
            body = whole
        if isinstance(body, bytes):
            whole_body = body
            untouched: tuple[bytes, LocalResponse | None] = (body, None)
            out, local = await self._run(REQUEST_PATH, lambda: self._whole_request(whole_body), untouched)
            self.exchange.request_sent = local is None
            return local or out
        local = await self._run(REQUEST_HEADERS, lambda: self._headers(Hook.REQUEST_HEADERS, False), None)
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
        self.exchange.set_response(status, headers.items())
        if not isinstance(body, bytes) and self.chain.buffers_response:
            whole = await _read_all(body, self.chain.buffers_response)
            if whole is None:
                return await self.respond_locally(
                    _too_large("upstream_response_too_large", 502, self.chain.buffers_response)
                )
            body = whole
        if isinstance(body, bytes):
            whole_body = body
            return await self._run(RESPONSE_PATH, lambda: self._whole_response(whole_body), body)
        local = await self._run(RESPONSE_HEADERS, lambda: self._headers(Hook.RESPONSE_HEADERS, False), None)
        if local is not None:
            return await self.respond_locally(local)
        self.exchange.response_sent = True
        if not self.chain.hooks_response_body:
            return (chunk async for chunk, _ in body)
        return self._stream_response(body)

    async def respond_locally(self, response: LocalResponse) -> bytes:
        """Runs the response path on a response the gateway made itself."""
        self._replace(response)
        return await self._run(RESPONSE_PATH, lambda: self._whole_response(response.body), response.body)

    async def finish(self) -> None:
        """Runs the done hooks if the response path has not, then frees every sandbox."""
        if not self._done and Hook.DONE in self.chain.hooks:
            try:
                await self._run_done()
            except Exception:  # each failure was handled and logged by its processor's failure mode
                log.debug("done hooks of request %s stopped", self.facts.request_id, exc_info=True)
        self._close()

    async def _run(self, hooks: frozenset[Hook], phase: Callable[[], Awaitable[T]], untouched: T) -> T:
        """Runs a phase; when no processor takes any of ``hooks``, returns ``untouched`` at once."""
        if self.chain.hooks.isdisjoint(hooks):
            return untouched
        return await phase()

    # -- whole bodies ------------------------------------------------------------

    async def _whole_request(self, body: bytes) -> tuple[bytes, LocalResponse | None]:
        local = await self._headers(Hook.REQUEST_HEADERS, not body)
        if local is not None or not body:
            return body, local
        return await self._body(Hook.REQUEST_BODY, body, True)

    async def _whole_response(self, body: bytes) -> bytes:
        """Response phases over a whole body; a local response restarts them below its maker."""
        while True:
            local = await self._headers(Hook.RESPONSE_HEADERS, not body)
            if local is None and body:
                body, local = await self._body(Hook.RESPONSE_BODY, body, True)
            if local is None:
                break
            self._replace(local)
            body = local.body
        await self._run_done()
        return body

    # -- streamed bodies (hooks per chunk) -----------------------------------------

    async def _stream_request(self, source: BodySource) -> AsyncIterator[bytes]:
        async for chunk, end in source:
            out, local = await self._body(Hook.REQUEST_BODY, chunk, end)
            if local is not None:
                # Breaking the upstream request off: a truncated body must not look complete.
                self.interrupt = local
                raise StreamAborted("a request body hook answered while the body streamed upstream")
            if out:
                yield out

    async def _stream_response(self, source: BodySource) -> AsyncIterator[bytes]:
        async for chunk, end in source:
            out, local = await self._body(Hook.RESPONSE_BODY, chunk, end)
            if local is not None:
                raise StreamAborted("a response body hook failed after the response started")
            if out:
                yield out

    # -- phases ---------------------------------------------------------------------

    def _order(self, hook: Hook) -> Iterable[int]:
        """The processors that take part in ``hook`` here: in the chain's order, below the processor
        that answered, if one did."""
        order = self.chain.order[hook]
        if self._span == len(self.chain.processors) or hook in REQUEST_PATH:
            return order
        return [i for i in order if i < self._span]

    async def _headers(self, hook: Hook, end_of_stream: bool) -> LocalResponse | None:
        for i in self._order(hook):
            if not self._dropped[i]:
                _, local = await self._call(i, hook, None, end_of_stream)
                if local is not None:
                    return self._answered(i, hook, local)
        return None

    async def _body(self, hook: Hook, chunk: bytes, end: bool) -> tuple[bytes, LocalResponse | None]:
        for i in self._order(hook):
            if self._dropped[i]:
                continue
            processor = self.chain.processors[i]
            if processor.buffers and len(chunk) > processor.max_body_bytes:
                if hook is Hook.REQUEST_BODY:
                    refused = _too_large("request_too_large", 413, processor.max_body_bytes)
                else:
                    refused = _too_large("upstream_response_too_large", 502, processor.max_body_bytes)
                return b"", self._answered(i, hook, refused)
            out, local = await self._call(i, hook, chunk, end)
            if local is not None:
                return b"", self._answered(i, hook, local)
            chunk = out if out is not None else chunk
        return chunk, None

    def _answered(self, i: int, hook: Hook, local: LocalResponse) -> LocalResponse:
        """Processor ``i`` answered: the response path now runs below it."""
        self._span = i
        if hook in (Hook.REQUEST_HEADERS, Hook.REQUEST_BODY):
            self._reached = i + 1
        return local

    async def _run_done(self) -> None:
        self._done = True
        for i in self.chain.order[Hook.DONE]:
            if i < self._reached and not self._dropped[i]:
                await self._call(i, Hook.DONE, None, True)
        self._close()

    # -- one hook, under the processor's failure mode --------------------------------

    async def _call(
        self, i: int, hook: Hook, body: bytes | None, end: bool
    ) -> tuple[bytes | None, LocalResponse | None]:
        """Runs hook ``hook`` of processor ``i``, pauses included: the body to pass on, or a local response."""
        processor = self.chain.processors[i]
        metrics = processor.metrics.hooks[hook]
        metrics.calls.count += 1
        retries = 0 if hook is Hook.DONE else processor.phase_retries
        undoable = processor.failure_mode is FailureMode.FAIL_OPEN or retries
        saved = self.exchange.snapshot() if undoable else None
        calls_before = self.exchange.mark_calls(i) if retries else 0
        outcome = self._outcomes[i]
        started = perf_counter()
        try:
            for retries_left in range(retries, -1, -1):
                try:
                    sandbox, local = await self._attempt(i, hook, body, end)
                    break
                except ProcessorFailure as failure:
                    failure.locate(processor.name, hook.phase)
                    if not retries_left or failure.cause not in RETRIED_CAUSES:
                        return self._failed(i, hook, failure, saved, body)
                    self._retry(i, hook, failure, saved)
                    self.exchange.rewind_calls(i, calls_before)
        except asyncio.CancelledError:
            self._discard(i)  # stopped mid-call: the instance is in no state to serve on
            self._dropped[i] = True
            raise
        finally:
            elapsed = perf_counter() - started
            metrics.seconds.observe(elapsed)
            outcome.seconds += elapsed
        if local is not None:
            metrics.responded.count += 1
            outcome.result = "respond"
            return None, local
        metrics.continued.count += 1
        if outcome.result == "skipped":
            outcome.result = "continue"
        return (sandbox.take_body() if body is not None else None), None

    async def _attempt(self, i: int, hook: Hook, body: bytes | None, end: bool) -> tuple[Sandbox, LocalResponse | None]:
        """One try of a hook, pauses included; raises ``ProcessorFailure``."""
        processor = self.chain.processors[i]
        sandbox = self._sandboxes[i] or await self._start(i)
        if processor.buffers and body is not None and len(body) > processor.memory_limit:
            raise ProcessorFailure(
                Cause.MEMORY_LIMIT, f"a {len(body)}-byte body is over its {processor.memory_limit}-byte quota"
            )
        action = await sandbox.run(hook, body, end)
        while action == Action.PAUSE:
            await self._perform_calls(i, sandbox)
            action = await sandbox.resume(hook)
        if action == Action.RESPOND:
            response = sandbox.take_response()
            assert response is not None, "the core lets a hook respond only after send-response"
            return sandbox, LocalResponse(*response)
        return sandbox, None

    async def _perform_calls(self, i: int, sandbox: Sandbox) -> None:
        """Runs the calls a paused processor waits on; raises the failure to fail its phase with."""
        processor = self.chain.processors[i]
        caller = Caller(
            self.exchange,
            i,
            processor.name,
            self.facts.request_id,
            processor.subrequests,
            processor.metrics.subrequests,
        )
        deadline = time.monotonic() + sandbox.remaining
        await self.client.perform(caller, self.depth + 1, deadline, sandbox.quota_left)
        sandbox.check_held()

    def _retry(self, i: int, hook: Hook, failure: ProcessorFailure, saved: Snapshot | None) -> None:
        """Undoes a failed try of a phase; the next try gets a fresh instance (the core keeps the checkpoint)."""
        processor = self.chain.processors[i]
        processor.metrics.hooks[hook].retried.inc()
        log.warning(
            "%s (request %s, trying the phase again)",
            failure,
            self.facts.request_id,
            extra={"processor": processor.name, "cause": failure.cause.value},
        )
        self._discard(i)
        self._retrying[i] = True
        if saved is not None:
            self.exchange.restore(saved)

    async def _start(self, i: int) -> Sandbox:
        """The processor's sandbox for this request: a pooled one, or a new one started for it."""
        processor = self.chain.processors[i]
        sandbox = None
        if not self._retrying[i]:  # a retry's instance starts bound, so its init sees the checkpoint
            sandbox = processor.pool.take() if processor.pool is not None else processor.prepared_sandbox(self.runtime)
        try:
            if sandbox is None:
                sandbox = processor.sandbox(self.runtime)
                sandbox.bind(self.exchange, i, self.facts.request_id, self._scheduler)
                await sandbox.start()
            else:  # started before this request, once
                sandbox.bind(self.exchange, i, self.facts.request_id, self._scheduler)
        except ProcessorFailure as failure:
            raise failure.locate(processor.name, Hook.INIT.phase) from None
        self._sandboxes[i] = sandbox
        return sandbox

    def _failed(
        self, i: int, hook: Hook, failure: ProcessorFailure, saved: Snapshot | None, body: bytes | None
    ) -> tuple[bytes | None, LocalResponse | None]:
        processor = self.chain.processors[i]
        processor.metrics.hooks[Hook[failure.phase.upper()]].error(failure.cause)
        self._outcomes[i].result = f"error:{failure.cause.value}"
        self._discard(i)
        self._dropped[i] = True
        mode = processor.failure_mode
        log.warning(
            "%s (request %s, %s)",
            failure,
            self.facts.request_id,
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

    def _discard(self, i: int) -> None:
        """Frees processor ``i``'s sandbox after a failure; the core keeps its checkpoint and calls."""
        sandbox = self._sandboxes[i]
        if sandbox is not None:
            sandbox.close()
            self._sandboxes[i] = None

    def _replace(self, response: LocalResponse) -> None:
        self.exchange.set_response(response.status, response.headers)

    def _close(self) -> None:
        """The request is over: its sandboxes go back to their pools, or are discarded (a failed one was already)."""
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
"""The hooks of each phase group, for skipping a phase nobody takes part in (``ChainRun._run``)."""

RETRIED_CAUSES = frozenset({Cause.TRAP, Cause.TIMEOUT, Cause.MEMORY_LIMIT})
"""Failures a fresh instance may not repeat; a refused config or a broken ABI it would."""


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
