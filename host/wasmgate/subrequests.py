"""Sub-requests: the calls a processor makes to other services (``host.call``).

A hook only records its calls (it runs on a guest thread); when it returns
``pause`` the chain hands them here, and they run at once, concurrently, on
the event loop: no thread waits on a call. When all have finished the chain
resumes the processor. If the phase's deadline comes first, the calls still
running are cancelled (their connections closed) and the processor fails
with ``timeout``.

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
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import aiohttp
import yarl

from .config import SubrequestConfig
from .exchange import TOKEN

if TYPE_CHECKING:
    from .metrics import SubrequestMetrics

GATEWAY_HEADERS = frozenset({"idempotency-key", "wasmgate-attempt", "wasmgate-depth"})
"""Set on every sub-request by the gateway; a processor may not set them."""
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
    """One call a processor started; ``result`` is set when it has finished."""

    handle: int
    method: str
    url: yarl.URL
    headers: list[tuple[str, str]]
    body: bytes
    timeout: float
    result: CallResponse | CallError | None = None
    attempts: int = field(default=0)

    @property
    def held_bytes(self) -> int:
        """What the host holds for this call, counted against the processor's memory quota."""
        held = len(self.body) + sum(len(n) + len(v) for n, v in self.headers)
        if isinstance(self.result, CallResponse):
            held += len(self.result.body) + sum(len(n) + len(v) for n, v in self.result.headers)
        return held


class CallLedger:
    """The calls of one processor in one request: started by hooks, performed on pause, read on resume.

    Handles are the calls' sequence numbers in the request, from 1.
    """

    def __init__(self, policy: SubrequestConfig, metrics: SubrequestMetrics, processor: str, request_id: str) -> None:
        self.policy = policy
        self.metrics = metrics
        self._key_prefix = f"{request_id}\0{processor}\0"
        self._allow = frozenset(policy.allow)
        self._calls: dict[int, Call] = {}
        self._started: list[Call] = []

    def start(self, method: str, url: str, headers: list[tuple[str, str]], body: bytes, timeout_ms: int) -> int | str:
        """Records a call: its handle, or why it cannot be made (for the guest's ``result``)."""
        if not TOKEN.fullmatch(method):
            return f"{method!r} is not an HTTP method"
        try:
            target = yarl.URL(url)
        except ValueError as error:
            return f"{url!r} is not a URL: {error}"
        if target.scheme not in ("http", "https") or not target.host:
            return f"{url!r} is not an absolute http or https URL"
        if reserved := next((name for name, _ in headers if name.lower() in GATEWAY_HEADERS), None):
            return f"header {reserved!r} is set by the gateway"
        if sum(call.result is None for call in self._started) >= self.policy.max_concurrent:
            return f"{self.policy.max_concurrent} calls are already waiting (subrequests.max_concurrent)"
        handle = len(self._calls) + 1
        timeout = timeout_ms / 1000 if timeout_ms else self.policy.timeout
        call = self._calls[handle] = Call(handle, method.upper(), target, headers, body, timeout)
        if str(target.origin()) not in self._allow:
            call.result = CallError.DENIED  # finished already: nothing is sent
            self.metrics.finished(target, CallError.DENIED, 0.0)
        self._started.append(call)
        return handle

    @property
    def started(self) -> list[Call]:
        """The calls started since the last pause: what the next pause waits on."""
        return self._started

    def take_unfinished(self) -> list[Call]:
        """The calls started since the last pause that still need performing."""
        started, self._started = self._started, []
        return [call for call in started if call.result is None]

    def mark(self) -> int:
        """Where the calls stand, for ``rewind``."""
        return len(self._calls)

    def rewind(self, mark: int) -> None:
        """Forgets the calls since ``mark``: a phase tried again makes them again, under the same numbers and keys."""
        for handle in range(mark + 1, len(self._calls) + 1):
            del self._calls[handle]
        self._started = []

    def finished(self, handle: int) -> Call | None:
        call = self._calls.get(handle)
        return call if call is not None and call.result is not None else None

    @property
    def held_bytes(self) -> int:
        return sum(call.held_bytes for call in self._calls.values())

    def idempotency_key(self, call: Call) -> str:
        """The same for every attempt of a call: request id, processor and sequence number, digested."""
        return hashlib.sha256(f"{self._key_prefix}{call.handle}".encode()).hexdigest()[:32]


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

    async def perform(self, ledger: CallLedger, depth: int, deadline: float) -> bool:
        """Runs the calls started since the last pause; False if the deadline came first (the rest are cancelled)."""
        calls = ledger.take_unfinished()
        if not calls:  # every call was denied: finished already
            return True
        tasks = [asyncio.create_task(self._call(ledger, call, depth, deadline)) for call in calls]
        try:
            _, pending = await asyncio.wait(tasks, timeout=max(0.0, deadline - time.monotonic()))
        except asyncio.CancelledError:  # the request went away: so do its calls
            for task in tasks:
                task.cancel()
            raise
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for call in calls:
            if call.result is None:
                call.result = CallError.CANCELLED
                ledger.metrics.finished(call.url, CallError.CANCELLED, 0.0)
        return not pending

    async def _call(self, ledger: CallLedger, call: Call, depth: int, deadline: float) -> None:
        policy, key = ledger.policy, ledger.idempotency_key(call)
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
            result = await self._attempt(call, headers, timeout, policy.max_response_bytes)
            retryable = result in (CallError.TIMEOUT, CallError.CONNECT) or (
                isinstance(result, CallResponse) and result.status in RETRY_STATUSES
            )
            delay = policy.backoff * 2 ** (call.attempts - 1)
            if not retryable or call.attempts > policy.retries or time.monotonic() + delay >= deadline:
                break
            ledger.metrics.retried(call.url)
            await asyncio.sleep(delay)
        call.result = result
        ledger.metrics.finished(call.url, result, time.monotonic() - started)

    async def _attempt(
        self, call: Call, headers: list[tuple[str, str]], timeout: float, max_bytes: int
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
                body = bytearray()
                async for chunk in response.content.iter_any():
                    body += chunk
                    if len(body) > max_bytes:
                        return CallError.TOO_LARGE  # leaving the block drops what was read and the connection
                return CallResponse(response.status, [(k.lower(), v) for k, v in response.headers.items()], bytes(body))
        except TimeoutError:
            return CallError.TIMEOUT
        except aiohttp.ClientError:
            return CallError.CONNECT
