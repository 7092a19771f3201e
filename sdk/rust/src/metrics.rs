//! Processor-defined Prometheus metrics, exported by the gateway as
//! `wasmgate_guest_<processor>_<name>` with a `processor` label.
//!
//! ```ignore
//! static REDACTED: Metric = Metric::counter("pii_redactions_total", "Values redacted.", &["kind"]);
//! REDACTED.record(&["email"], 1.0);
//! ```

use std::sync::OnceLock;

use crate::hostcalls;
use crate::types::{LogLevel, MetricKind};

/// A metric declared on first use. If the gateway refuses the declaration
/// (a bad name, say), the reason is logged once and records are dropped.
pub struct Metric {
    kind: MetricKind,
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
    buckets: &'static [f64],
    id: OnceLock<Option<u32>>,
}

impl Metric {
    pub const fn counter(name: &'static str, help: &'static str, labels: &'static [&'static str]) -> Metric {
        Metric::new(MetricKind::Counter, name, help, labels, &[])
    }

    pub const fn gauge(name: &'static str, help: &'static str, labels: &'static [&'static str]) -> Metric {
        Metric::new(MetricKind::Gauge, name, help, labels, &[])
    }

    /// `buckets` empty means the gateway's default buckets.
    pub const fn histogram(
        name: &'static str,
        help: &'static str,
        labels: &'static [&'static str],
        buckets: &'static [f64],
    ) -> Metric {
        Metric::new(MetricKind::Histogram, name, help, labels, buckets)
    }

    const fn new(
        kind: MetricKind,
        name: &'static str,
        help: &'static str,
        labels: &'static [&'static str],
        buckets: &'static [f64],
    ) -> Metric {
        Metric { kind, name, help, labels, buckets, id: OnceLock::new() }
    }

    /// Adds to a counter, sets a gauge, or observes a histogram value.
    /// `label_values` are given in the order of the declared labels.
    pub fn record(&self, label_values: &[&str], value: f64) {
        let id = self.id.get_or_init(|| {
            match hostcalls::define_metric(self.kind, self.name, self.help, self.labels, self.buckets) {
                Ok(id) => Some(id),
                Err(reason) => {
                    hostcalls::log(LogLevel::Warn, &format!("metric {} not declared: {reason}", self.name));
                    None
                }
            }
        });
        if let Some(id) = id {
            hostcalls::record_metric(*id, label_values, value);
        }
    }
}
