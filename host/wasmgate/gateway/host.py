"""The services a processor's host calls use: shared state and its own metrics.

The core runs every host call; what needs the gateway (a state backend, a
Prometheus family) is asked here, on the event loop. Each state call is
bounded by what is left of the phase's deadline.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from ..metrics import GUEST_LOG_DROPPED, GuestMetrics
from ..runtime import Cause, Counter, MetricKind, ProcessorFailure
from ..state import CounterOutOfRange, Quota, QuotaExceeded, State, StateUnavailable

T = TypeVar("T")


class ProcessorHost:
    """One processor's services (``runtime.Host``)."""

    def __init__(self, processor: str, state: State | None, metrics: GuestMetrics, quota: Quota) -> None:
        self._processor = processor
        self._state = state
        self._quota = quota
        self._metrics = metrics

    def _backend(self, call: str) -> State:
        if self._state is None:
            raise ProcessorFailure(Cause.STATE_UNAVAILABLE, f"{call}: the gateway has no state backend")
        return self._state

    @staticmethod
    async def _bounded(call: str, work: Awaitable[T], timeout: float) -> T:
        """``work``'s result; ``ProcessorFailure`` when it fails or outlasts ``timeout``, the phase's remainder."""
        try:
            async with asyncio.timeout(timeout):
                return await work
        except TimeoutError:
            raise ProcessorFailure(Cause.TIMEOUT, f"{call}: the phase's deadline passed") from None
        except StateUnavailable as error:
            raise ProcessorFailure(Cause.STATE_UNAVAILABLE, f"{call}: {error}") from None
        except CounterOutOfRange as error:
            raise ProcessorFailure(Cause.ABI_VIOLATION, f"{call}: {error}") from None
        except QuotaExceeded as error:
            raise ProcessorFailure(Cause.STATE_QUOTA, f"{call}: {error}") from None

    async def counter_add(self, key: bytes, delta: int, window_ms: int, limit: int | None, timeout: float) -> Counter:
        state = self._backend("counter-add")
        adding = state.counter_add(key, delta, window_ms, limit, timeout, self._quota)
        added = await self._bounded("counter-add", adding, timeout)
        return Counter(added.value, min(added.reset_ms, 0xFFFFFFFF), added.applied)

    async def kv_get(self, key: bytes, timeout: float) -> bytes | None:
        return await self._bounded("kv-get", self._backend("kv-get").kv_get(key, timeout), timeout)

    async def kv_set(self, key: bytes, value: bytes, ttl_ms: int, timeout: float) -> None:
        await self._bounded("kv-set", self._backend("kv-set").kv_set(key, value, ttl_ms, timeout, self._quota), timeout)

    async def kv_delete(self, key: bytes, timeout: float) -> None:
        await self._bounded("kv-delete", self._backend("kv-delete").kv_delete(key, timeout), timeout)

    def define_metric(
        self, metric: int, kind: MetricKind, name: str, help_text: str, labels: list[str], buckets: list[float]
    ) -> None:
        self._metrics.define(metric, kind, name, help_text, labels, buckets)

    def record_metrics(self, records: list[tuple[int, tuple[str, ...], float]]) -> None:
        self._metrics.record(records)

    def dropped_log_lines(self, count: int) -> None:
        GUEST_LOG_DROPPED.labels(self._processor).inc(count)
