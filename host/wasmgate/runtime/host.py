"""What a processor's host calls need from the gateway: shared state and metrics.

The core runs every host call itself, except what needs Python: it asks,
the sandbox suspends, and ``Sandbox`` gets the answer from a ``Host``.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

from .abi import MetricKind


class Counter(NamedTuple):
    """WIT ``record counter``."""

    value: int
    reset_ms: int
    applied: bool


class Host(Protocol):
    """A processor's services. State calls raise ``ProcessorFailure`` when they cannot be served."""

    async def counter_add(self, key: bytes, delta: int, window_ms: int, limit: int | None, timeout: float) -> Counter:
        """Adds to a counter in the processor's namespace (``key`` carries it), within ``timeout`` seconds."""

    async def kv_get(self, key: bytes, timeout: float) -> bytes | None: ...

    async def kv_set(self, key: bytes, value: bytes, ttl_ms: int, timeout: float) -> None: ...

    async def kv_delete(self, key: bytes, timeout: float) -> None: ...

    def define_metric(
        self, metric: int, kind: MetricKind, name: str, help_text: str, labels: list[str], buckets: list[float]
    ) -> None:
        """Makes metric number ``metric``, checked by the core already; ``ValueError`` tells the guest why not."""

    def record_metrics(self, records: list[tuple[int, tuple[str, ...], float]]) -> None:
        """Records ``(metric, label values, value)``, each checked by the core."""

    def dropped_log_lines(self, count: int) -> None:
        """Counts guest log lines over the per-request limit."""
