"""Sub-requests: the calls a processor makes to other services (``host.call``).

A hook only records its calls (the core checks and keeps them); when it
returns ``pause`` the chain hands them here, and they run at once,
concurrently, on the event loop: no thread waits on a call. When all have
finished the chain resumes the processor. If the phase's deadline comes
first, the calls still running are cancelled (their connections closed) and
the processor fails with ``timeout``. Answers count against the processor's
memory quota as they arrive: one that would pass it fails the processor with
``memory_limit`` before more of it is read.

Every attempt carries ``Idempotency-Key`` (the same for each attempt of one
call: a digest of the request id, the processor and the call's sequence
number in the request), ``Wasmgate-Attempt`` (1 on the first) and
``Wasmgate-Depth`` (one more than the request's own, so processors that
call back into a gateway cannot loop). Failed attempts are retried per the
processor's policy on connect errors, timeouts and 502/503/504, with a
doubling backoff, and never past the deadline: since every attempt carries
the key, this holds for any method.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import time
from dataclasses import dataclass

import aiohttp

from ..config import SubrequestConfig
from ..metrics import SubrequestMetrics
from ..runtime import Cause, Exchange, ProcessorFailure

DEPTH_HEADER = "Wasmgate-Depth"
RETRY_STATUSES = frozenset({502, 503, 504})


class CallError(enum.IntEnum):
    """WIT ``enum call-error``."""

    TIMEOUT = 0
    CONNECT = 1
    DENIED = 2
    TOO_LARGE = 3
    CANCELLED = 4


@dataclass(slots=True)
class CallResponse:
    status: int
    headers: list[tuple[str, str]]
    body: bytes


@dataclass(slots=True)
class Call:
    """One call a paused processor waits on."""

    handle: int
    method: str
    url: str
    origin: str
    headers: list[tuple[str, str]]
    body: bytes
    timeout: float
    attempts: int = 0


@dataclass(slots=True)
class Caller:
    """Whose calls these are: processor ``index`` of the request of ``exchange``, and its policy."""

    exchange: Exchange
    index: int
    processor: str
    request_id: str
    policy: SubrequestConfig
    metrics: SubrequestMetrics

    def idempotency_key(self, call: Call) -> str:
        """The same for every attempt of a call: request id, processor and sequence number, digested."""
        return hashlib.sha256(f"{self.request_id}\0{self.processor}\0{call.handle}".encode()).hexdigest()[:32]


class _OverQuota(Exception):
    """An answer would pass what the processor's quota has left."""


class _Budget:
    """The bytes the answers of one pause may take together."""

    __slots__ = ("left",)

    def __init__(self, left: int) -> None:
        self.left = left

    def take(self, size: int) -> None:
        self.left -= size
        if self.left < 0:
            raise _OverQuota


class CallClient:
    """Performs calls for every request of a worker, on one pooled client."""

    def __init__(self, max_connections: int = 1000) -> None:
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:  # made on first use, on the loop that uses it
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._max_connections),
                auto_decompress=False,
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        return self._session

    async def perform(self, caller: Caller, depth: int, deadline: float, quota_left: int) -> None:
        """Runs the calls ``caller`` started since its last pause; raises ``ProcessorFailure``
        if the deadline comes first (the rest are cancelled) or the answers pass ``quota_left``."""
        started = caller.exchange.take_calls(caller.index)
        calls = []
        for handle, method, url, origin, headers, body, timeout, denied in started:
            if denied:  # finished already: nothing is sent
                caller.metrics.denied()
            else:
                calls.append(Call(handle, method, url, origin, headers, body, timeout))
        if not calls:
            return
        budget = _Budget(quota_left)
        tasks = [asyncio.create_task(self._call(caller, call, depth, deadline, budget)) for call in calls]
        try:
            done, pending = await asyncio.wait(tasks, timeout=max(0.0, deadline - time.monotonic()))
        except asyncio.CancelledError:  # the request went away: so do its calls
            for task in tasks:
                task.cancel()
            raise
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for call, task in zip(calls, tasks, strict=True):
            if task in pending:
                caller.exchange.fail_call(caller.index, call.handle, CallError.CANCELLED)
                caller.metrics.finished(call.origin, "cancelled", 0.0, 0)
        if any(not task.cancelled() and isinstance(task.exception(), _OverQuota) for task in done):
            raise ProcessorFailure(
                Cause.MEMORY_LIMIT,
                f"the answers of its sub-requests pass what is left of its quota ({quota_left} bytes)",
            )
        if pending:
            raise ProcessorFailure(
                Cause.TIMEOUT,
                f"the phase's deadline passed with {len(started)} sub-request(s) started; "
                "unfinished ones were cancelled",
            )

    async def _call(self, caller: Caller, call: Call, depth: int, deadline: float, budget: _Budget) -> None:
        policy, key = caller.policy, caller.idempotency_key(call)
        started = time.monotonic()
        while True:
            call.attempts += 1
            headers = [
                *call.headers,
                ("Idempotency-Key", key),
                ("Wasmgate-Attempt", str(call.attempts)),
                (DEPTH_HEADER, str(depth)),
            ]
            timeout = min(call.timeout, deadline - time.monotonic())
            result = await self._attempt(call, headers, timeout, policy.max_response_bytes, budget)
            retryable = result in (CallError.TIMEOUT, CallError.CONNECT) or (
                isinstance(result, CallResponse) and result.status in RETRY_STATUSES
            )
            delay = policy.backoff * 2 ** (call.attempts - 1)
            if not retryable or call.attempts > policy.retries or time.monotonic() + delay >= deadline:
                break
            if isinstance(result, CallResponse):  # dropped for the next attempt: its bytes are free again
                budget.left += len(result.body) + sum(len(k) + len(v) for k, v in result.headers)
            caller.metrics.retried(call.origin)
            await asyncio.sleep(delay)
        seconds = time.monotonic() - started
        if isinstance(result, CallResponse):
            caller.exchange.finish_call(caller.index, call.handle, result.status, result.headers, result.body)
            caller.metrics.finished(call.origin, f"{result.status // 100}xx", seconds, len(result.body))
        else:
            caller.exchange.fail_call(caller.index, call.handle, result)
            caller.metrics.finished(call.origin, result.name.lower(), seconds, 0)

    async def _attempt(
        self, call: Call, headers: list[tuple[str, str]], timeout: float, max_bytes: int, budget: _Budget
    ) -> CallResponse | CallError:
        if timeout <= 0:
            return CallError.TIMEOUT
        try:
            async with self._client().request(
                call.method,
                call.url,
                headers=headers,
                data=call.body or None,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as response:
                if response.content_length is not None and response.content_length > max_bytes:
                    return CallError.TOO_LARGE  # refused before reading it
                answer = [(k.lower(), v) for k, v in response.headers.items()]
                budget.take(sum(len(k) + len(v) for k, v in answer))
                body = bytearray()
                async for chunk in response.content.iter_any():
                    if len(body) + len(chunk) > max_bytes:
                        return CallError.TOO_LARGE  # leaving the block drops what was read and the connection
                    budget.take(len(chunk))
                    body += chunk
                return CallResponse(response.status, answer, bytes(body))
        except TimeoutError:
            return CallError.TIMEOUT
        except aiohttp.ClientError:
            return CallError.CONNECT
