"""Prometheus metrics: the gateway's, each processor's hooks, and the processors' own.

Label children used on the request path are bound once per processor and
phase (``HookMetrics``), not looked up per request.
"""

from __future__ import annotations

import math
import re
import threading

import yarl
from prometheus_client import Counter, Gauge, Histogram

from .abi import Hook, MetricKind
from .failures import AbiViolation, Cause
from .subrequests import CallError, CallResponse

_FAST = (0.00002, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)

REQUESTS = Counter("wasmgate_requests", "Requests served, by route and status.", ["route", "status"])
REQUEST_SECONDS = Histogram(
    "wasmgate_request_duration_seconds", "Time from a request's arrival to its response's end.", ["route"]
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


class RouteMetrics:
    """The metric children of one route, bound once rather than looked up per request."""

    __slots__ = ("_route", "_by_status", "seconds", "upstream_seconds")

    def __init__(self, route: str) -> None:
        self._route = route
        self._by_status: dict[int, Counter] = {}
        self.seconds = REQUEST_SECONDS.labels(route)
        self.upstream_seconds = UPSTREAM_SECONDS.labels(route)

    def served(self, status: int) -> None:
        child = self._by_status.get(status)
        if child is None:
            child = self._by_status[status] = REQUESTS.labels(self._route, str(status))
        child.inc()


DENIED_ORIGIN = "(denied)"
"""The origin label of a denied call: the origin a guest asked for is its own, unbounded, choice."""


class SubrequestMetrics:
    """The sub-request metrics of one processor; origins are those its ``allow`` lists."""

    def __init__(self, processor: str) -> None:
        self._processor = processor

    def finished(self, url: yarl.URL, result: CallResponse | CallError, seconds: float) -> None:
        if result is CallError.DENIED:
            SUBREQUESTS.labels(self._processor, DENIED_ORIGIN, "denied").inc()
            return
        origin = str(url.origin())
        if isinstance(result, CallResponse):
            outcome = f"{result.status // 100}xx"
            SUBREQUEST_BYTES.labels(self._processor, origin).inc(len(result.body))
        else:
            outcome = result.name.lower()
        SUBREQUESTS.labels(self._processor, origin, outcome).inc()
        SUBREQUEST_SECONDS.labels(self._processor, origin).observe(seconds)

    def retried(self, url: yarl.URL) -> None:
        SUBREQUEST_RETRIES.labels(self._processor, str(url.origin())).inc()


class ProcessorMetrics:
    """Everything the host measures about one processor."""

    def __init__(self, processor: str) -> None:
        self.hooks = {hook: HookMetrics(processor, hook) for hook in Hook}
        self.subrequests = SubrequestMetrics(processor)
        self._memory = MEMORY_HIGH_WATER.labels(processor)
        self._peak = 0

    def note_memory(self, peak: int) -> None:
        if peak > self._peak:  # a racing smaller write is harmless: the next peak corrects it
            self._peak = peak
            self._memory.set(peak)


class HookMetrics:
    """The metric children of one processor in one phase."""

    __slots__ = ("calls", "continued", "responded", "failed", "retried", "seconds", "_errors", "_labels")

    def __init__(self, processor: str, hook: Hook) -> None:
        labels = (processor, hook.phase)
        self._labels = labels
        self.calls = HOOK_CALLS.labels(*labels)
        self.continued = HOOK_OUTCOMES.labels(*labels, "continue")
        self.responded = HOOK_OUTCOMES.labels(*labels, "respond")
        self.failed = HOOK_OUTCOMES.labels(*labels, "error")
        self.retried = PHASE_RETRIES.labels(*labels)
        self.seconds = HOOK_SECONDS.labels(*labels)
        self._errors: dict[Cause, Counter] = {}

    def error(self, cause: Cause) -> None:
        self.failed.inc()
        child = self._errors.get(cause)
        if child is None:
            child = self._errors[cause] = HOOK_ERRORS.labels(*self._labels, cause.value)
        child.inc()


_NAME = re.compile(r"[a-z_][a-z0-9_]{0,63}")
MAX_METRICS_PER_PROCESSOR = 32
MAX_LABELS = 8
MAX_SERIES_PER_METRIC = 1000

_Shape = tuple[MetricKind, tuple[str, ...], tuple[float, ...]]
_families: dict[str, tuple[_Shape, object]] = {}
_families_lock = threading.Lock()


class GuestMetrics:
    """The metrics one processor declared, exported as ``wasmgate_guest_<name>``.

    Every series carries the ``processor`` label, so processors sharing a
    metric name stay apart. Bounded: a guest cannot grow the host's metric
    memory past ``MAX_METRICS_PER_PROCESSOR`` x ``MAX_SERIES_PER_METRIC``.
    """

    def __init__(self, processor: str) -> None:
        self._processor = processor
        self._ids: dict[str, int] = {}
        self._metrics: list[tuple[_Shape, object, dict[tuple[str, ...], object]]] = []  # and each series' child
        self._lock = threading.Lock()

    def define(self, kind: MetricKind, name: str, help_text: str, labels: list[str], buckets: tuple[float, ...]) -> int:
        """Returns the metric's id; raises ``ValueError`` with the reason to give the guest."""
        if not _NAME.fullmatch(name):
            raise ValueError(f"metric name {name!r} must match [a-z_][a-z0-9_]* (at most 64 characters)")
        if len(labels) > MAX_LABELS:
            raise ValueError(f"metric {name!r} has {len(labels)} labels, at most {MAX_LABELS} are allowed")
        for label in labels:
            if not _NAME.fullmatch(label) or label == "processor" or label.startswith("__"):
                raise ValueError(f"label name {label!r} of metric {name!r} is not allowed")
        if len(set(labels)) != len(labels):
            raise ValueError(f"metric {name!r} repeats a label name")
        increasing = list(buckets) == sorted(set(buckets)) and all(map(math.isfinite, buckets))
        if kind is MetricKind.HISTOGRAM and not increasing:
            raise ValueError(f"buckets of histogram {name!r} must be finite and strictly increasing")
        shape = (kind, ("processor", *labels), buckets if kind is MetricKind.HISTOGRAM else ())
        with self._lock:
            known = self._ids.get(name)
            if known is not None:
                if self._metrics[known][0] != shape:
                    raise ValueError(f"metric {name!r} was declared before with another kind, labels or buckets")
                return known
            if len(self._metrics) >= MAX_METRICS_PER_PROCESSOR:
                raise ValueError(f"a processor may declare at most {MAX_METRICS_PER_PROCESSOR} metrics")
            family = _family(name, help_text[:200] or name, shape)
            self._ids[name] = len(self._metrics)
            self._metrics.append((shape, family, {}))
            return len(self._metrics) - 1

    def record(self, metric: int, label_values: list[str], value: float) -> None:
        if not 0 <= metric < len(self._metrics):
            raise AbiViolation(f"record-metric: no metric with id {metric}")
        (kind, labels, _), family, series = self._metrics[metric]
        if len(label_values) != len(labels) - 1:
            raise AbiViolation(f"record-metric: {len(label_values)} label values for {len(labels) - 1} labels")
        if not math.isfinite(value) or (kind is MetricKind.COUNTER and value < 0):
            raise AbiViolation(f"record-metric: {value} is not a valid {kind.name.lower()} value")
        key = tuple(label_values)
        child = series.get(key)
        if child is None:
            with self._lock:
                if len(series) >= MAX_SERIES_PER_METRIC:
                    GUEST_SERIES_DROPPED.labels(self._processor).inc()
                    return
                child = series[key] = family.labels(self._processor, *label_values)
        if kind is MetricKind.COUNTER:
            child.inc(value)
        elif kind is MetricKind.GAUGE:
            child.set(value)
        else:
            child.observe(value)


def _family(name: str, help_text: str, shape: _Shape) -> object:
    """The process-wide Prometheus family for a guest metric name."""
    kind, labels, buckets = shape
    with _families_lock:
        existing = _families.get(name)
        if existing is not None:
            if existing[0] != shape:
                raise ValueError(f"metric {name!r} is already declared by another processor with another shape")
            return existing[1]
        full = f"wasmgate_guest_{name}"
        if kind is MetricKind.COUNTER:
            family = Counter(full, help_text, labels)
        elif kind is MetricKind.GAUGE:
            family = Gauge(full, help_text, labels, multiprocess_mode="livesum")
        else:
            family = Histogram(full, help_text, labels, buckets=buckets or Histogram.DEFAULT_BUCKETS)
        _families[name] = (shape, family)
        return family
