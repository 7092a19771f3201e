"""Metrics the request path tallies reach Prometheus exactly as direct updates would."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from wasmgate import metrics
from wasmgate.metrics import GaugeTally, GuestMetrics, HistogramTally, Tally
from wasmgate.runtime import MetricKind

VALUES = [0.00001, 0.0025, 0.003, 0.5, 2.0, 1e9]
"""Below the first bound, exactly on one, between two, past the last."""


def samples(registry: CollectorRegistry, name: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    family = next(metric for metric in registry.collect() if metric.name == name)
    recorded = (s for s in family.samples if not s.name.endswith("_created"))  # when it was made, not what it saw
    return {(s.name.replace(name, ""), tuple(sorted(s.labels.items()))): s.value for s in recorded}


def test_a_histogram_tally_flushes_what_observe_records():
    registry = CollectorRegistry()
    observed = Histogram("observed", "", buckets=(0.001, 0.0025, 0.01, 1.0), registry=registry)
    tallied = Histogram("tallied", "", buckets=(0.001, 0.0025, 0.01, 1.0), registry=registry)
    tally = HistogramTally(tallied)
    for value in VALUES:
        observed.observe(value)
        tally.observe(value)
    tally.flush()
    tally.flush()  # a second flush adds nothing
    assert samples(registry, "tallied") == samples(registry, "observed")


def test_a_counter_tally_adds_its_count_once_flushed():
    registry = CollectorRegistry()
    counter = Counter("hits", "", registry=registry)
    tally = Tally(counter)
    tally.count += 2
    tally.add(0.5)
    assert registry.get_sample_value("hits_total") == 0.0
    tally.flush()
    tally.flush()
    assert registry.get_sample_value("hits_total") == 2.5


def test_a_gauge_tally_sets_the_latest_value_once_flushed():
    registry = CollectorRegistry()
    gauge = Gauge("level", "", registry=registry)
    tally = GaugeTally(gauge)
    tally.add(3.0)
    tally.add(1.0)
    tally.flush()
    gauge.set(7.0)
    tally.flush()  # nothing new to set: the gauge keeps what it was set to meanwhile
    assert registry.get_sample_value("level") == 7.0


def test_a_processor_made_again_by_reloads_records_into_the_same_tallies():
    tallies = None
    for _ in range(3):
        guest = GuestMetrics("reloaded")
        guest.define(0, MetricKind.COUNTER, "reload_hits", "", ["k"], [])
        guest.record([(0, ("a",), 1.0)])
        tallies = tallies or len(metrics._tallies)
        assert len(metrics._tallies) == tallies
    metrics.flush()
    labels = {"processor": "reloaded", "k": "a"}
    assert REGISTRY.get_sample_value("wasmgate_guest_reloaded_reload_hits_total", labels) == 3


def test_a_metric_number_defined_twice_under_different_names_is_refused_the_second_time():
    guest = GuestMetrics("racing")
    guest.define(0, MetricKind.COUNTER, "race_first", "", [], [])
    with pytest.raises(ValueError, match="metric number 0 is taken"):
        guest.define(0, MetricKind.COUNTER, "race_second", "", [], [])
    guest.define(0, MetricKind.COUNTER, "race_first", "", [], [])  # the same definition again is no race


def test_a_processor_declaring_another_processors_metric_name_with_another_shape_does_not_take_it():
    squatter = GuestMetrics("squatter")
    squatter.define(0, MetricKind.GAUGE, "llm_prompt_tokens_total", "", ["x"], [])
    owner = GuestMetrics("token-count")
    owner.define(0, MetricKind.COUNTER, "llm_prompt_tokens_total", "", ["model"], [])
    owner.record([(0, ("m",), 5.0)])
    metrics.flush()
    labels = {"processor": "token-count", "model": "m"}
    assert REGISTRY.get_sample_value("wasmgate_guest_token_count_llm_prompt_tokens_total", labels) == 5


def test_a_reloaded_module_may_not_change_the_shape_of_its_processors_metric():
    GuestMetrics("reshaped").define(0, MetricKind.COUNTER, "hits", "", ["a"], [])
    with pytest.raises(ValueError, match="earlier module with other labels"):
        GuestMetrics("reshaped").define(0, MetricKind.COUNTER, "hits", "", ["b"], [])
