//! `wasmgate._core`: the Python surface of the core, small and typed
//! (`wasmgate/_core.pyi`). Python drives sandboxes with the poll protocol
//! of `sandbox`; nothing here calls into Python while a guest runs.

mod engine;
mod exchange;
mod sandbox;

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyFrozenSet, PyList, PyString, PyTuple};

use crate::headers::{FRAMING, HOP_BY_HOP};

pyo3::create_exception!(
    _core,
    ModuleError,
    pyo3::exceptions::PyException,
    "A module that cannot serve as a processor, and why."
);

/// Compiles WebAssembly text to a module's bytes.
#[pyfunction]
fn wat2wasm<'py>(py: Python<'py>, text: &str) -> PyResult<Bound<'py, PyBytes>> {
    let wasm = wat::parse_str(text).map_err(|error| pyo3::exceptions::PyValueError::new_err(error.to_string()))?;
    Ok(PyBytes::new(py, &wasm))
}

/// Header pairs from Python, as sent: a value that is not UTF-8 (aiohttp
/// keeps such bytes as surrogates) reaches processors with U+FFFD instead.
fn header_pairs(pairs: &Bound<'_, PyAny>) -> PyResult<Vec<(String, String)>> {
    let mut out = Vec::new();
    for item in pairs.try_iter()? {
        let item = item?;
        let pair = item.cast::<PyTuple>()?;
        let name = pair.get_item(0)?;
        let value = pair.get_item(1)?;
        let name = name.cast::<PyString>()?.to_string_lossy().into_owned();
        let value = value.cast::<PyString>()?.to_string_lossy().into_owned();
        out.push((name, value));
    }
    Ok(out)
}

fn pairs_to_list<'py>(py: Python<'py>, pairs: &[(String, String)]) -> PyResult<Bound<'py, PyList>> {
    PyList::new(py, pairs.iter().map(|(n, v)| (n.as_str(), v.as_str())))
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add_class::<engine::PyEngine>()?;
    m.add_class::<engine::PyModule>()?;
    m.add_class::<engine::PyGuest>()?;
    m.add_class::<exchange::PyExchange>()?;
    m.add_class::<exchange::PySnapshot>()?;
    m.add_class::<sandbox::PySandbox>()?;
    m.add("ModuleError", py.get_type::<ModuleError>())?;
    m.add_function(wrap_pyfunction!(wat2wasm, m)?)?;
    let managed: Vec<&str> = HOP_BY_HOP.iter().chain(&FRAMING).copied().collect();
    m.add("MANAGED_HEADERS", PyFrozenSet::new(py, &managed)?)?;
    sandbox::add_status_codes(m)?;
    Ok(())
}
