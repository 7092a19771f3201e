//! Sandboxes for Python: every call returns a status code (see `add_status_codes`).

use std::sync::Mutex;

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyTuple};

use super::engine::{PyEngine, PyGuest};
use super::exchange::PyExchange;
use super::pairs_to_list;
use crate::abi::Hook;
use crate::failure::{Cause, Failure, escaped};
use crate::requests::{HostAnswer, HostRequest};
use crate::sandbox::{Body, Sandbox, Status};

/// A status below `EVENTS` is a finished call's value, with nothing to drain: the fast path.
const EVENTS: u32 = 0x100;
const YIELDED: u32 = 0x200;
const WAITING: u32 = 0x400;
const FAILED: u32 = 0x800;
const VALUE: u32 = 0xff;

pub fn add_status_codes(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("EVENTS", EVENTS)?;
    m.add("YIELDED", YIELDED)?;
    m.add("WAITING", WAITING)?;
    m.add("FAILED", FAILED)?;
    m.add("VALUE", VALUE)?;
    Ok(())
}

/// One instance of a processor. Its calls return a status: the call's value
/// (masked by `VALUE`) when it finished, or `YIELDED`, `WAITING` or `FAILED`;
/// `EVENTS` is set beside any of them when log lines or metric records wait to be drained.
#[pyclass(name = "Sandbox", module = "wasmgate._core")]
pub struct PySandbox {
    // A Mutex only to make the class Sync: every method has `&mut self`, so `get_mut` never locks.
    inner: Mutex<Sandbox>,
}

fn hook(index: u8) -> PyResult<Hook> {
    Hook::from_index(index).ok_or_else(|| pyo3::exceptions::PyValueError::new_err(format!("{index} is not a hook")))
}

impl PySandbox {
    fn sandbox(&mut self) -> &mut Sandbox {
        self.inner.get_mut().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn code(&mut self, status: Status) -> u32 {
        let sandbox = self.sandbox();
        let events = if sandbox.has_events() { EVENTS } else { 0 };
        events
            | match status {
                Status::Done(value) => value & VALUE,
                Status::Yielded => YIELDED,
                Status::Waiting => WAITING,
                Status::Failed => FAILED,
            }
    }

    fn reply(&mut self, answer: HostAnswer) -> PyResult<()> {
        if self.sandbox().answer(answer) {
            Ok(())
        } else {
            Err(pyo3::exceptions::PyRuntimeError::new_err("the sandbox is not waiting for an answer"))
        }
    }
}

#[pymethods]
impl PySandbox {
    #[new]
    fn new(engine: &PyEngine, guest: &PyGuest) -> PySandbox {
        PySandbox { inner: Mutex::new(engine.inner.maker().sandbox(guest.inner.clone())) }
    }

    /// A started instance of `guest` nobody has used, if one is ready (`Guest.fill`).
    #[staticmethod]
    fn prepared(guest: &PyGuest) -> Option<PySandbox> {
        guest.stock.take().map(|sandbox| PySandbox { inner: Mutex::new(sandbox) })
    }

    /// Makes the instance and runs `init` with the processor's config; its value is the phases `init` chose.
    /// Every call's deadline starts when it is made; it runs at once when `now`, else it is
    /// `YIELDED` without running, to be polled in its turn.
    fn start(&mut self, now: bool) -> u32 {
        let status = self.sandbox().start(now);
        self.code(status)
    }

    /// `start`, polled through every yield without the GIL: for callers with no event loop.
    fn start_blocking(&mut self, py: Python<'_>) -> u32 {
        let sandbox = self.sandbox();
        let status = py.detach(|| match sandbox.start(true) {
            Status::Yielded => sandbox.run_blocking(),
            status => status,
        });
        self.code(status)
    }

    /// Calls hook number `hook`; body hooks read `body`, which must stay unchanged meanwhile.
    #[pyo3(signature = (hook, body, end_of_stream, now))]
    fn call(&mut self, hook: u8, body: Option<Bound<'_, PyBytes>>, end_of_stream: bool, now: bool) -> PyResult<u32> {
        let hook = self::hook(hook)?;
        let body = body.map(|bytes| {
            let data = bytes.as_bytes();
            let (ptr, len) = (data.as_ptr(), data.len());
            // SAFETY: a bytes object is immutable, and the Py reference kept with the Body keeps it alive.
            unsafe { Body::borrowed(ptr, len, Box::new(bytes.unbind())) }
        });
        let status = self.sandbox().call(hook, body, end_of_stream, now);
        Ok(self.code(status))
    }

    /// Calls `on-resume` for the paused `hook`, in what is left of its deadline.
    fn resume(&mut self, hook: u8, now: bool) -> PyResult<u32> {
        let hook = self::hook(hook)?;
        let status = self.sandbox().resume(hook, now);
        Ok(self.code(status))
    }

    /// The processor's module rewritten to start as this instance is now, when it has run `init`
    /// and served no request; None when the module cannot be snapshotted (see the core's `image`).
    fn init_image<'py>(&mut self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let sandbox = self.sandbox();
        let image = py.detach(|| sandbox.init_image()).map_err(pyo3::exceptions::PyRuntimeError::new_err)?;
        Ok(image.map(|bytes| PyBytes::new(py, &bytes)))
    }

    /// Runs the call on after a yield or an answer.
    fn poll(&mut self) -> u32 {
        let status = self.sandbox().poll();
        self.code(status)
    }

    /// Fails a call waiting for its turn once its phase's deadline has passed; `YIELDED` while it may run on.
    fn expire(&mut self) -> u32 {
        let status = self.sandbox().expire();
        self.code(status)
    }

    /// `poll` through every yield without the GIL: for callers with no event loop.
    fn poll_blocking(&mut self, py: Python<'_>) -> u32 {
        let sandbox = self.sandbox();
        let status = py.detach(|| sandbox.run_blocking());
        self.code(status)
    }

    /// What the waiting call asks: a tuple whose first item names it.
    fn request<'py>(&mut self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyTuple>>> {
        let Some(request) = self.sandbox().request() else { return Ok(None) };
        let secs = |timeout: std::time::Duration| timeout.as_secs_f64();
        let tuple = match request {
            HostRequest::CounterAdd { key, delta, window_ms, limit, timeout } => {
                ("counter-add", PyBytes::new(py, &key), delta, window_ms, limit, secs(timeout)).into_pyobject(py)?
            }
            HostRequest::KvGet { key, timeout } => {
                ("kv-get", PyBytes::new(py, &key), secs(timeout)).into_pyobject(py)?
            }
            HostRequest::KvSet { key, value, ttl_ms, timeout } => {
                ("kv-set", PyBytes::new(py, &key), PyBytes::new(py, &value), ttl_ms, secs(timeout)).into_pyobject(py)?
            }
            HostRequest::KvDelete { key, timeout } => {
                ("kv-delete", PyBytes::new(py, &key), secs(timeout)).into_pyobject(py)?
            }
            HostRequest::DefineMetric { id, kind, name, help, labels, buckets } => {
                ("define-metric", id, kind as u32, name, help, labels, buckets).into_pyobject(py)?
            }
            HostRequest::Flush => ("flush",).into_pyobject(py)?,
        };
        Ok(Some(tuple))
    }

    fn answer_counter(&mut self, value: i64, reset_ms: u32, applied: bool) -> PyResult<()> {
        self.reply(HostAnswer::Counter { value, reset_ms, applied })
    }

    fn answer_value(&mut self, value: Option<&[u8]>) -> PyResult<()> {
        self.reply(HostAnswer::Value(value.map(<[u8]>::to_vec)))
    }

    fn answer_done(&mut self) -> PyResult<()> {
        self.reply(HostAnswer::Done)
    }

    /// Refuses a metric definition: `reason` is the guest's error.
    fn answer_refused(&mut self, reason: String) -> PyResult<()> {
        self.reply(HostAnswer::Refused(reason))
    }

    /// Fails the processor with `cause` (a `Cause` value).
    fn answer_failure(&mut self, cause: &str, detail: String) -> PyResult<()> {
        let cause = Cause::parse(cause)
            .ok_or_else(|| pyo3::exceptions::PyValueError::new_err(format!("{cause:?} is not a cause")))?;
        self.reply(HostAnswer::Failed(Failure::new(cause, detail)))
    }

    /// Why the sandbox failed: `(cause, detail)`.
    fn failure(&mut self) -> Option<(&'static str, String)> {
        // An init error or a trap names guest text.
        self.sandbox().failure().map(|failure| (failure.cause.as_str(), escaped(&failure.detail).into_owned()))
    }

    /// The log lines `(level, text, truncated)`, metric records `(metric, labels, value)`
    /// and count of dropped lines that waited.
    #[allow(clippy::type_complexity)]
    fn drain<'py>(&mut self, py: Python<'py>) -> PyResult<(Vec<(u8, String, bool)>, Bound<'py, PyList>, u32)> {
        let events = self.sandbox().drain();
        let lines = events.lines.into_iter().map(|line| (line.level, line.text, line.truncated)).collect();
        let records = PyList::empty(py);
        for record in events.records {
            records.append((record.metric, PyTuple::new(py, record.labels)?, record.value))?;
        }
        Ok((lines, records, events.dropped))
    }

    /// Serves the request of `exchange` as processor `index` of its route.
    fn bind(&mut self, exchange: &PyExchange, index: usize) -> PyResult<()> {
        if index >= exchange.inner.lock().scopes.len() {
            return Err(pyo3::exceptions::PyIndexError::new_err(format!("no processor {index} on this route")));
        }
        self.sandbox().bind(exchange.inner.clone(), index);
        Ok(())
    }

    /// Forgets the request it served, before a pooled instance serves another.
    fn unbind(&mut self) {
        self.sandbox().unbind();
    }

    /// The body the last hook set with `replace-body`, if it did.
    fn take_body<'py>(&mut self, py: Python<'py>) -> Option<Bound<'py, PyBytes>> {
        self.sandbox().take_body().map(|body| PyBytes::new(py, &body))
    }

    /// The response the last hook set with `send-response`: `(status, headers, body)`.
    #[allow(clippy::type_complexity)]
    fn take_response<'py>(
        &mut self,
        py: Python<'py>,
    ) -> PyResult<Option<(u16, Bound<'py, PyList>, Bound<'py, PyBytes>)>> {
        let Some(response) = self.sandbox().take_response() else { return Ok(None) };
        Ok(Some((response.status, pairs_to_list(py, &response.headers)?, PyBytes::new(py, &response.body))))
    }

    /// Fails the processor if its memory and its sub-requests' answers pass its quota.
    fn check_held(&mut self) -> u32 {
        let status = self.sandbox().check_held();
        self.code(status)
    }

    fn close(&mut self) {
        self.sandbox().close();
    }

    /// The largest guest memory this instance had.
    #[getter]
    fn peak_memory(&mut self) -> usize {
        self.sandbox().peak_memory()
    }

    #[getter]
    fn memory_size(&mut self) -> usize {
        self.sandbox().memory_size()
    }

    /// Bytes the guest may still take: a bound for what the gateway reads for it.
    #[getter]
    fn quota_left(&mut self) -> usize {
        self.sandbox().quota_left()
    }

    /// Seconds left of the phase's deadline.
    #[getter]
    fn remaining(&mut self) -> f64 {
        self.sandbox().remaining().as_secs_f64()
    }
}
