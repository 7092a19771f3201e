//! The exchange of one request, for Python: the proxy reads and sets what
//! crosses the wire, the chain performs the sub-requests processors started.

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList};

use super::{header_pairs, pairs_to_list};
use crate::calls::{CallError, CallResponse, CallResult};
use crate::exchange::{Exchange, Facts, Snapshot};
use crate::headers::HeaderMap;

#[pyclass(name = "Exchange", module = "wasmgate._core", frozen)]
pub struct PyExchange {
    pub inner: Exchange,
}

/// What `Exchange.restore` puts back.
#[pyclass(name = "Snapshot", module = "wasmgate._core", frozen)]
pub struct PySnapshot {
    inner: Snapshot,
}

fn index_error(index: usize) -> PyErr {
    pyo3::exceptions::PyIndexError::new_err(format!("no processor {index} on this route"))
}

#[pymethods]
impl PyExchange {
    #[new]
    #[pyo3(signature = (method, path, query, request_id, route, tenant, client_address, headers, upstream, processors))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        method: String,
        path: String,
        query: String,
        request_id: String,
        route: String,
        tenant: String,
        client_address: String,
        headers: &Bound<'_, PyAny>,
        upstream: String,
        processors: usize,
    ) -> PyResult<PyExchange> {
        let facts = Facts { method, path, query, request_id, route, tenant, client_address };
        let headers = HeaderMap::new(header_pairs(headers)?);
        Ok(PyExchange { inner: Exchange::new(facts, headers, upstream, processors) })
    }

    fn request_headers<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        pairs_to_list(py, self.inner.lock().request_headers.entries())
    }

    #[getter]
    fn upstream(&self) -> String {
        self.inner.lock().upstream.clone()
    }

    #[getter]
    fn response_status(&self) -> u16 {
        self.inner.lock().response_status
    }

    /// The response headers; None while there is no response.
    fn response_headers<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyList>>> {
        let data = self.inner.lock();
        data.response_headers.as_ref().map(|headers| pairs_to_list(py, headers.entries())).transpose()
    }

    fn set_response(&self, status: u16, headers: &Bound<'_, PyAny>) -> PyResult<()> {
        let headers = HeaderMap::new(header_pairs(headers)?);
        let mut data = self.inner.lock();
        data.response_status = status;
        data.response_headers = Some(headers);
        Ok(())
    }

    #[getter]
    fn request_sent(&self) -> bool {
        self.inner.lock().request_sent
    }

    #[setter]
    fn set_request_sent(&self, sent: bool) {
        self.inner.lock().request_sent = sent;
    }

    #[getter]
    fn response_sent(&self) -> bool {
        self.inner.lock().response_sent
    }

    #[setter]
    fn set_response_sent(&self, sent: bool) {
        self.inner.lock().response_sent = sent;
    }

    /// What a failed hook may have changed, to put back with `restore`.
    fn snapshot(&self) -> PySnapshot {
        PySnapshot { inner: self.inner.snapshot() }
    }

    fn restore(&self, snapshot: &PySnapshot) {
        self.inner.restore(snapshot.inner.clone());
    }

    /// The sub-requests processor `index` started since its last pause:
    /// `(handle, method, url, origin, headers, body, timeout, denied)`.
    #[allow(clippy::type_complexity)]
    fn take_calls<'py>(
        &self,
        py: Python<'py>,
        index: usize,
    ) -> PyResult<Vec<(u32, String, String, String, Bound<'py, PyList>, Bound<'py, PyBytes>, f64, bool)>> {
        let mut data = self.inner.lock();
        let scope = data.scopes.get_mut(index).ok_or_else(|| index_error(index))?;
        scope
            .calls
            .take_started()
            .map(|call| {
                let denied = matches!(call.result, Some(CallResult::Error(CallError::Denied)));
                Ok((
                    call.handle,
                    call.method.clone(),
                    call.url.clone(),
                    call.origin.clone(),
                    pairs_to_list(py, &call.headers)?,
                    PyBytes::new(py, &call.body),
                    call.timeout.as_secs_f64(),
                    denied,
                ))
            })
            .collect()
    }

    /// Sets the answer of a call processor `index` started.
    fn finish_call(
        &self,
        index: usize,
        handle: u32,
        status: u16,
        headers: &Bound<'_, PyAny>,
        body: &[u8],
    ) -> PyResult<bool> {
        let response = CallResponse { status, headers: header_pairs(headers)?, body: body.to_vec() };
        self.finish(index, handle, CallResult::Response(response))
    }

    /// Sets why a call has no answer: a `call-error` code.
    fn fail_call(&self, index: usize, handle: u32, error: u8) -> PyResult<bool> {
        let error = CallError::from_code(error)
            .ok_or_else(|| pyo3::exceptions::PyValueError::new_err(format!("{error} is not a call-error")))?;
        self.finish(index, handle, CallResult::Error(error))
    }

    /// Where processor `index`'s calls stand, for `rewind_calls`.
    fn mark_calls(&self, index: usize) -> PyResult<usize> {
        Ok(self.inner.lock().scopes.get(index).ok_or_else(|| index_error(index))?.calls.mark())
    }

    /// Forgets processor `index`'s calls since `mark`: a phase tried again makes them again, under the same handles.
    fn rewind_calls(&self, index: usize, mark: usize) -> PyResult<()> {
        let mut data = self.inner.lock();
        data.scopes.get_mut(index).ok_or_else(|| index_error(index))?.calls.rewind(mark);
        Ok(())
    }
}

impl PyExchange {
    fn finish(&self, index: usize, handle: u32, result: CallResult) -> PyResult<bool> {
        let mut data = self.inner.lock();
        Ok(data.scopes.get_mut(index).ok_or_else(|| index_error(index))?.calls.finish(handle, result))
    }
}
