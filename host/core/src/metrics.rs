//! The metrics a processor declares (`define-metric`) and records (`record-metric`).
//!
//! The table here checks every definition and record, so a guest's mistake
//! is caught in the host call that made it; the gateway only exports what
//! passed. Bounded: a guest cannot grow the host's metric memory past
//! `MAX_METRICS_PER_PROCESSOR` metrics of at most `MAX_LABELS` labels whose
//! values are at most `MAX_LABEL_VALUE_BYTES` long.

use std::collections::HashMap;

use crate::failure::{Failure, quoted};

pub const MAX_METRICS_PER_PROCESSOR: usize = 32;
pub const MAX_LABELS: usize = 8;
pub const MAX_BUCKETS: usize = 64;
pub const MAX_HELP_CHARS: usize = 200;
pub const MAX_LABEL_VALUE_BYTES: usize = 1024;

/// WIT `enum metric-kind`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricKind {
    Counter = 0,
    Gauge = 1,
    Histogram = 2,
}

impl MetricKind {
    pub fn from_code(code: u32) -> Option<MetricKind> {
        [MetricKind::Counter, MetricKind::Gauge, MetricKind::Histogram].into_iter().find(|k| *k as u32 == code)
    }

    fn name(self) -> &'static str {
        match self {
            MetricKind::Counter => "counter",
            MetricKind::Gauge => "gauge",
            MetricKind::Histogram => "histogram",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct MetricShape {
    pub kind: MetricKind,
    pub labels: Vec<String>,
    /// Histograms only; empty means the default buckets.
    pub buckets: Vec<f64>,
}

/// `[a-z_][a-z0-9_]{0,63}`: a Prometheus name that also works as a label.
fn is_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b'a'..=b'z' | b'_'))
        && name.len() <= 64
        && bytes.all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_'))
}

/// A definition's shape, or why it is refused (the guest's `result`).
pub fn shape(kind: MetricKind, name: &str, labels: Vec<String>, buckets: Vec<f64>) -> Result<MetricShape, String> {
    if !is_name(name) {
        return Err(format!("metric name {} must match [a-z_][a-z0-9_]* (at most 64 characters)", quoted(name)));
    }
    for label in &labels {
        if !is_name(label) || label == "processor" || label.starts_with("__") {
            return Err(format!("label name {} of metric {} is not allowed", quoted(label), quoted(name)));
        }
    }
    if labels.iter().enumerate().any(|(i, label)| labels[..i].contains(label)) {
        return Err(format!("metric {} repeats a label name", quoted(name)));
    }
    let buckets = if kind == MetricKind::Histogram { buckets } else { Vec::new() };
    let increasing = buckets.iter().all(|b| b.is_finite()) && buckets.windows(2).all(|w| w[0] < w[1]);
    if !increasing {
        return Err(format!("buckets of histogram {} must be finite and strictly increasing", quoted(name)));
    }
    Ok(MetricShape { kind, labels, buckets })
}

/// Checked before anything of a definition is read from guest memory.
pub fn check_counts(name_len: u32, labels: u32, buckets: u32) -> Result<(), String> {
    if name_len > 64 {
        return Err(format!("a metric name of {name_len} bytes is longer than 64"));
    }
    if labels as usize > MAX_LABELS {
        return Err(format!("a metric has {labels} labels, at most {MAX_LABELS} are allowed"));
    }
    if buckets as usize > MAX_BUCKETS {
        return Err(format!("a histogram has {buckets} buckets, at most {MAX_BUCKETS} are allowed"));
    }
    Ok(())
}

#[derive(Debug)]
pub enum Lookup {
    /// Declared before with the same shape: the same id.
    Known(u32),
    /// Not declared yet: the id it gets once the gateway has made it.
    New(u32),
}

/// The metrics one processor declared, shared by all its instances.
#[derive(Debug, Default)]
pub struct MetricTable {
    ids: HashMap<String, u32>,
    shapes: Vec<MetricShape>,
}

impl MetricTable {
    pub fn lookup(&self, name: &str, shape: &MetricShape) -> Result<Lookup, String> {
        if let Some(&id) = self.ids.get(name) {
            return if self.shapes[id as usize] == *shape {
                Ok(Lookup::Known(id))
            } else {
                Err(format!("metric {} was declared before with another kind, labels or buckets", quoted(name)))
            };
        }
        if self.shapes.len() >= MAX_METRICS_PER_PROCESSOR {
            return Err(format!("a processor may declare at most {MAX_METRICS_PER_PROCESSOR} metrics"));
        }
        Ok(Lookup::New(self.shapes.len() as u32))
    }

    /// Records a definition the gateway accepted under `id` (from `lookup`). The gateway refuses an
    /// `id` another instance's definition took meanwhile, so a taken one is never overwritten.
    pub fn insert(&mut self, id: u32, name: String, shape: MetricShape) {
        if id as usize == self.shapes.len() {
            self.ids.insert(name, id);
            self.shapes.push(shape);
        }
    }

    /// The names of the metrics declared so far, by id.
    pub fn names(&self) -> Vec<String> {
        let mut names = vec![String::new(); self.shapes.len()];
        for (name, &id) in &self.ids {
            names[id as usize].clone_from(name);
        }
        names
    }

    /// Checks a record before its label values are read: the metric's kind.
    pub fn check_record(&self, metric: u32, label_values: u32, value: f64) -> Result<MetricKind, Failure> {
        let shape = self
            .shapes
            .get(metric as usize)
            .ok_or_else(|| Failure::abi(format!("record-metric: no metric with id {metric}")))?;
        if label_values as usize != shape.labels.len() {
            return Err(Failure::abi(format!(
                "record-metric: {label_values} label values for {} labels",
                shape.labels.len()
            )));
        }
        if !value.is_finite() || (shape.kind == MetricKind::Counter && value < 0.0) {
            return Err(Failure::abi(format!("record-metric: {value} is not a valid {} value", shape.kind.name())));
        }
        Ok(shape.kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counter(labels: &[&str]) -> MetricShape {
        shape(MetricKind::Counter, "hits", labels.iter().map(|l| l.to_string()).collect(), vec![]).unwrap()
    }

    #[test]
    fn names_follow_prometheus() {
        assert!(is_name("tokens_total"));
        assert!(!is_name("Tokens"));
        assert!(!is_name("9lives"));
        assert!(!is_name(&"a".repeat(65)));
    }

    #[test]
    fn the_processor_label_and_reserved_labels_are_refused() {
        let refused = shape(MetricKind::Counter, "hits", vec!["processor".into()], vec![]);
        assert_eq!(refused.unwrap_err(), "label name 'processor' of metric 'hits' is not allowed");
        assert!(shape(MetricKind::Counter, "hits", vec!["__x".into()], vec![]).is_err());
        assert!(shape(MetricKind::Counter, "hits", vec!["a".into(), "a".into()], vec![]).is_err());
    }

    #[test]
    fn histogram_buckets_must_increase() {
        assert!(shape(MetricKind::Histogram, "h", vec![], vec![1.0, 2.0]).is_ok());
        assert!(shape(MetricKind::Histogram, "h", vec![], vec![2.0, 1.0]).is_err());
        assert!(shape(MetricKind::Histogram, "h", vec![], vec![f64::NAN]).is_err());
    }

    #[test]
    fn a_second_definition_with_the_same_shape_gets_the_same_id() {
        let mut table = MetricTable::default();
        let Ok(Lookup::New(id)) = table.lookup("hits", &counter(&["a"])) else { panic!("new") };
        table.insert(id, "hits".into(), counter(&["a"]));
        assert!(matches!(table.lookup("hits", &counter(&["a"])), Ok(Lookup::Known(0))));
        assert!(table.lookup("hits", &counter(&["b"])).unwrap_err().contains("declared before"));
    }

    #[test]
    fn a_processor_declares_a_bounded_number_of_metrics() {
        let mut table = MetricTable::default();
        for i in 0..MAX_METRICS_PER_PROCESSOR as u32 {
            table.insert(i, format!("m{i}"), counter(&[]));
        }
        assert!(table.lookup("one_more", &counter(&[])).unwrap_err().contains("at most 32"));
    }

    #[test]
    fn records_are_checked_before_their_labels_are_read() {
        let mut table = MetricTable::default();
        table.insert(0, "hits".into(), counter(&["a"]));
        assert_eq!(table.check_record(0, 1, 1.0), Ok(MetricKind::Counter));
        assert!(table.check_record(1, 1, 1.0).unwrap_err().detail.contains("no metric with id 1"));
        assert!(table.check_record(0, 128, 1.0).unwrap_err().detail.contains("128 label values for 1 labels"));
        assert!(table.check_record(0, 1, -1.0).unwrap_err().detail.contains("not a valid counter value"));
    }
}
