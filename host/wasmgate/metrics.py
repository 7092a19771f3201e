"""Prometheus metrics: the gateway's, each processor's hooks, and the processors' own.

What every request and every hook counts is *tallied*: kept as plain numbers
and added to its Prometheus series in bulk by ``flush``, which the gateway
calls whenever no request is in flight and at least every second. A locked
update of a Prometheus value costs about a microsecond here, and a request
through three processors makes a few dozen. Rare events (errors, retries,
sub-requests) update their series at once.
"""

from __future__ import annotations

import bisect
import threading
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

from .config import metric_namespace
from .runtime import Cause, Hook, MetricKind

_FAST = (0.00002, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)

REQUESTS = Counter("wasmgate_requests", "Requests served, by route and status.", ["route", "status"])
REQUEST_SECONDS = Histogram(
    "wasmgate_request_duration_seconds", "Time from a request's arrival to its response's end.", ["route"]
)
CONNECTIONS_REFUSED = Counter(
    "wasmgate_connections_refused", "Client connections answered 503 and closed: over http.max_connections."
)
UPSTREAM_SECONDS = Histogram(
    "wasmgate_upstream_duration_seconds", "Time from sending upstream to its response headers.", ["route"]
)
HOOK_CALLS = Counter("wasmgate_processor_invocations", "Hook invocations.", ["processor", "phase"])
HOOK_OUTCOMES = Counter(
    "wasmgate_processor_outcomes", "Hook outcomes: continue, respond or error.", ["processor", "phase", "outcome"]
)
HOOK_ERRORS = Counter("wasmgate_processor_errors", "Hook failures by cause.", ["processor", "phase", "cause"])
PHASE_RETRIES = Counter(
    "wasmgate_processor_phase_retries",
    "Phases tried again on a fresh instance after a failure.",
    ["processor", "phase"],
)
HOOK_SECONDS = Histogram(
    "wasmgate_processor_duration_seconds",
    "Time a hook took, sandbox start included.",
    ["processor", "phase"],
    buckets=_FAST,
)
MEMORY_HIGH_WATER = Gauge(
    "wasmgate_processor_memory_high_water_bytes",
    "Largest guest memory seen for a processor.",
    ["processor"],
    multiprocess_mode="max",
)
GUEST_LOG_DROPPED = Counter(
    "wasmgate_processor_log_lines_dropped", "Guest log lines over the per-request limit.", ["processor"]
)
GUEST_SERIES_DROPPED = Counter(
    "wasmgate_guest_series_dropped", "Guest metric samples dropped for too many label sets.", ["processor"]
)


SUBREQUESTS = Counter(
    "wasmgate_subrequests",
    "Sub-requests by processor, target origin and outcome: a status class (2xx...) or an error.",
    ["processor", "origin", "outcome"],
)
SUBREQUEST_SECONDS = Histogram(
    "wasmgate_subrequest_duration_seconds",
    "Time from a sub-request's start to its result, retries included.",
    ["processor", "origin"],
)
SUBREQUEST_RETRIES = Counter(
    "wasmgate_subrequest_retries", "Sub-request attempts after the first.", ["processor", "origin"]
)
SUBREQUEST_BYTES = Counter(
    "wasmgate_subrequest_received_bytes", "Response body bytes sub-requests received.", ["processor", "origin"]
)


MODULE_INFO = Gauge(
    "wasmgate_module_info",
    "1 for the module version (sha256 of its .wasm bytes) each processor serves now, 0 for earlier ones.",
    ["processor", "sha256"],
    multiprocess_mode="livemax",
)
RELOADS = Counter("wasmgate_reloads", "Reloads of modules and config, by result: applied or rejected.", ["result"])


class Tally:
    """A counter's increments, kept until ``flush`` adds them to its series."""

    __slots__ = ("_child", "count")

    def __init__(self, child: Counter) -> None:
        self._child = child
        self.count: float = 0
        _tallies.append(self)

    def add(self, value: float) -> None:
        self.count += value

    def flush(self) -> None:
        if self.count:
            count, self.count = self.count, 0
            self._child.inc(count)


class GaugeTally:
    """A gauge's latest value, kept until ``flush`` sets it."""

    __slots__ = ("_child", "_value")

    def __init__(self, child: Gauge) -> None:
        self._child = child
        self._value: float | None = None
        _tallies.append(self)

    def add(self, value: float) -> None:
        self._value = value

    def flush(self) -> None:
        if self._value is not None:
            value, self._value = self._value, None
            self._child.set(value)


class HistogramTally:
    """A histogram's observations, kept as bucket counts until ``flush`` adds them to its series."""

    __slots__ = ("_child", "_bounds", "_counts", "_sum")

    def __init__(self, child: Histogram) -> None:
        self._child = child
        self._bounds = child._upper_bounds
        self._counts = [0] * len(self._bounds)
        self._sum = 0.0
        _tallies.append(self)

    def observe(self, value: float) -> None:
        """As ``Histogram.observe``: the first bucket whose bound is at least ``value``."""
        self._counts[bisect.bisect_left(self._bounds, value)] += 1
        self._sum += value

    add = observe

    def flush(self) -> None:
        # prometheus-client keeps a histogram as one value per bucket and one for the sum: adding
        # to them is what ``observe`` does, once per observation (tested against it).
        for bucket, count in zip(self._child._buckets, self._counts, strict=True):
            if count:
                bucket.inc(count)
        if any(self._counts):
            self._child._sum.inc(self._sum)
            self._counts = [0] * len(self._bounds)
            self._sum = 0.0


_tallies: list[Tally | GaugeTally | HistogramTally] = []
"""Every tally made: a few per route and per processor's phase, each made once per label set."""


def flush() -> None:
    """Adds what every tally kept to its series."""
    for tally in _tallies:
        tally.flush()


class RouteMetrics:
    """The tallies of one route, made once per route name."""

    __slots__ = ("_route", "_by_status", "seconds", "upstream_seconds")

    @classmethod
    def of(cls, route: str) -> RouteMetrics:
        made = _routes.get(route)
        if made is None:
            made = _routes[route] = cls(route)
        return made

    def __init__(self, route: str) -> None:
        self._route = route
        self._by_status: dict[int, Tally] = {}
        self.seconds = HistogramTally(REQUEST_SECONDS.labels(route))
        self.upstream_seconds = HistogramTally(UPSTREAM_SECONDS.labels(route))

    def served(self, status: int) -> None:
        tally = self._by_status.get(status)
        if tally is None:
            tally = self._by_status[status] = Tally(REQUESTS.labels(self._route, str(status)))
        tally.count += 1


_routes: dict[str, RouteMetrics] = {}


DENIED_ORIGIN = "(denied)"
"""The origin label of a denied call: the origin a guest asked for is its own, unbounded, choice."""


class SubrequestMetrics:
    """The sub-request metrics of one processor; origins are those its ``allow`` lists."""

    def __init__(self, processor: str) -> None:
        self._processor = processor

    def denied(self) -> None:
        SUBREQUESTS.labels(self._processor, DENIED_ORIGIN, "denied").inc()

    def finished(self, origin: str, outcome: str, seconds: float, received: int) -> None:
        """A call ended: ``outcome`` is its status class (``2xx``...) or its error."""
        if received:
            SUBREQUEST_BYTES.labels(self._processor, origin).inc(received)
        SUBREQUESTS.labels(self._processor, origin, outcome).inc()
        SUBREQUEST_SECONDS.labels(self._processor, origin).observe(seconds)

    def retried(self, origin: str) -> None:
        SUBREQUEST_RETRIES.labels(self._processor, origin).inc()


class ProcessorMetrics:
    """Everything the host measures about one processor."""

    def __init__(self, processor: str) -> None:
        self.hooks = {hook: HookMetrics.of(processor, hook) for hook in Hook}
        self.subrequests = SubrequestMetrics(processor)
        self._memory = MEMORY_HIGH_WATER.labels(processor)
        self._peak = 0

    def note_memory(self, peak: int) -> None:
        if peak > self._peak:  # a racing smaller write is harmless: the next peak corrects it
            self._peak = peak
            self._memory.set(peak)


class HookMetrics:
    """The tallies and metric children of one processor in one phase, made once per processor name."""

    __slots__ = ("calls", "continued", "responded", "failed", "retried", "seconds", "_errors", "_labels")

    @classmethod
    def of(cls, processor: str, hook: Hook) -> HookMetrics:
        made = _hooks.get((processor, hook))
        if made is None:
            made = _hooks[(processor, hook)] = cls(processor, hook)
        return made

    def __init__(self, processor: str, hook: Hook) -> None:
        labels = (processor, hook.phase)
        self._labels = labels
        self.calls = Tally(HOOK_CALLS.labels(*labels))
        self.continued = Tally(HOOK_OUTCOMES.labels(*labels, "continue"))
        self.responded = Tally(HOOK_OUTCOMES.labels(*labels, "respond"))
        self.failed = HOOK_OUTCOMES.labels(*labels, "error")
        self.retried = PHASE_RETRIES.labels(*labels)
        self.seconds = HistogramTally(HOOK_SECONDS.labels(*labels))
        self._errors: dict[Cause, Counter] = {}

    def error(self, cause: Cause) -> None:
        self.failed.inc()
        child = self._errors.get(cause)
        if child is None:
            child = self._errors[cause] = HOOK_ERRORS.labels(*self._labels, cause.value)
        child.inc()


_hooks: dict[tuple[str, Hook], HookMetrics] = {}


MAX_SERIES_PER_METRIC = 1000

_Shape = tuple[MetricKind, tuple[str, ...], tuple[float, ...]]
_families: dict[str, tuple[_Shape, Counter | Gauge | Histogram]] = {}
_families_lock = threading.Lock()


class GuestMetrics:
    """The metrics one processor declared, exported as ``wasmgate_guest_<processor>_<name>``.

    The core checks each definition and record (names, labels, bounds, values)
    and numbers the metrics; here they are made and recorded. A processor's
    metric names are its own: another processor, another tenant's, declaring
    the same name makes another metric. Every series carries the ``processor``
    label too. Bounded: at most ``MAX_SERIES_PER_METRIC`` label sets per metric.
    """

    def __init__(self, processor: str) -> None:
        self._processor = processor
        # by metric: its kind, family and each label set's tally
        self._metrics: dict[int, tuple[MetricKind, Counter | Gauge | Histogram, dict[tuple[str, ...], Any]]] = {}
        self._lock = threading.Lock()

    def define(
        self, metric: int, kind: MetricKind, name: str, help_text: str, labels: list[str], buckets: list[float]
    ) -> None:
        """Makes metric number ``metric``; ``ValueError`` when an earlier module of this processor declared the
        name otherwise."""
        shape = (kind, ("processor", *labels), tuple(buckets))
        family = _family(f"wasmgate_guest_{metric_namespace(self._processor)}_{name}", help_text, shape)
        with self._lock:
            made = self._metrics.setdefault(metric, (kind, family, {}))
        if made[1] is not family:  # two instances raced to define different metrics under one number
            raise ValueError(f"metric number {metric} is taken; define {name!r} again")

    def record(self, records: list[tuple[int, tuple[str, ...], float]]) -> None:
        for metric, labels, value in records:
            kind, family, series = self._metrics[metric]
            tally = series.get(labels)
            if tally is None:
                with self._lock:
                    if len(series) >= MAX_SERIES_PER_METRIC:
                        GUEST_SERIES_DROPPED.labels(self._processor).inc()
                        continue
                    tally = series[labels] = _guest_tally(kind, family, (self._processor, *labels))
            tally.add(value)


_TALLIES: dict[MetricKind, Any] = {
    MetricKind.COUNTER: Tally,
    MetricKind.GAUGE: GaugeTally,
    MetricKind.HISTOGRAM: HistogramTally,
}


_guest_tallies: dict[tuple[Counter | Gauge | Histogram, tuple[str, ...]], Any] = {}


def _guest_tally(kind: MetricKind, family: Counter | Gauge | Histogram, labels: tuple[str, ...]) -> Any:
    """The one tally of a guest metric's series: a processor made again by each reload records into it,
    so tallies do not pile up."""
    with _families_lock:
        tally = _guest_tallies.get((family, labels))
        if tally is None:
            tally = _guest_tallies[(family, labels)] = _TALLIES[kind](family.labels(*labels))
        return tally


def _family(full: str, help_text: str, shape: _Shape) -> Counter | Gauge | Histogram:
    """The process-wide Prometheus family named ``full``: made once, and kept across reloads, which
    Prometheus's scrapes need."""
    kind, labels, buckets = shape
    with _families_lock:
        existing = _families.get(full)
        if existing is not None:
            if existing[0] != shape:
                raise ValueError(
                    f"metric {full!r} was declared by this processor's earlier module with other labels or"
                    " buckets; a metric keeps its shape until the gateway restarts"
                )
            return existing[1]
        family: Counter | Gauge | Histogram
        if kind is MetricKind.COUNTER:
            family = Counter(full, help_text, labels)
        elif kind is MetricKind.GAUGE:
            family = Gauge(full, help_text, labels, multiprocess_mode="livesum")
        else:
            family = Histogram(full, help_text, labels, buckets=buckets or Histogram.DEFAULT_BUCKETS)
        _families[full] = (shape, family)
        return family
