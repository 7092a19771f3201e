//! The engine, compiled modules and processors' guests, for Python.

use std::sync::Arc;
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::PyBytes;

use super::ModuleError;
use crate::calls::CallPolicy;
use crate::engine::Engine;
use crate::guest::{Guest, Image};
use crate::janitor::Stock;
use crate::module::Module;

/// One per process: the wasmtime engine with the host calls linked, and its epoch ticker.
#[pyclass(name = "Engine", module = "wasmgate._core", frozen)]
pub struct PyEngine {
    pub inner: Engine,
}

#[pymethods]
impl PyEngine {
    #[new]
    #[pyo3(signature = (max_instances, tick))]
    fn new(max_instances: u32, tick: f64) -> PyResult<PyEngine> {
        let tick = Duration::try_from_secs_f64(tick)
            .ok()
            .filter(|tick| !tick.is_zero())
            .ok_or_else(|| pyo3::exceptions::PyValueError::new_err("the tick must be a positive number of seconds"))?;
        let inner = Engine::new(max_instances, tick).map_err(|error| {
            pyo3::exceptions::PyRuntimeError::new_err(format!("the engine cannot start: {error:#}"))
        })?;
        Ok(PyEngine { inner })
    }

    /// Compiles, checks and links a module (without the GIL).
    fn compile(&self, py: Python<'_>, name: &str, wasm: &[u8]) -> PyResult<PyModule> {
        let compiled = py.detach(|| self.inner.compile(name, wasm));
        compiled.map(|inner| PyModule { inner }).map_err(ModuleError::new_err)
    }

    /// Links a module from the artifact `Module.serialize` made of `wasm`; without `wasm`, its
    /// instances cannot be snapshotted.
    ///
    /// The artifact is native code: the caller must have made it, and kept it
    /// where nobody else can change it.
    #[pyo3(signature = (name, artifact, wasm))]
    fn load(&self, py: Python<'_>, name: &str, artifact: &[u8], wasm: Option<&[u8]>) -> PyResult<PyModule> {
        // SAFETY: as documented, the gateway loads only its own artifacts from its private cache.
        let loaded = py.detach(|| unsafe { self.inner.load(name, artifact, wasm) });
        loaded.map(|inner| PyModule { inner }).map_err(ModuleError::new_err)
    }

    /// Part of every artifact's name: artifacts of another engine are never loaded.
    #[getter]
    fn artifact_tag(&self) -> String {
        self.inner.artifact_tag()
    }

    /// Every host import: `(module, name, signature in WAT)`.
    fn imports(&self) -> Vec<(&'static str, &'static str, String)> {
        self.inner.imports().iter().map(|import| (import.module, import.name, import.wat())).collect()
    }

    #[getter]
    fn tick(&self) -> f64 {
        self.inner.tick.as_secs_f64()
    }
}

/// A module compiled, checked against the WIT world, and linked.
#[pyclass(name = "Module", module = "wasmgate._core", frozen)]
pub struct PyModule {
    pub inner: Module,
}

#[pymethods]
impl PyModule {
    #[getter]
    fn name(&self) -> &str {
        self.inner.name()
    }

    /// The compiled artifact, for `Engine.load`.
    fn serialize<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        let bytes =
            self.inner.serialize().map_err(|error| pyo3::exceptions::PyRuntimeError::new_err(format!("{error:#}")))?;
        Ok(PyBytes::new(py, &bytes))
    }
}

/// A processor as its sandboxes see it: module, config and limits; and its
/// instances started ahead of need (see `janitor`).
#[pyclass(name = "Guest", module = "wasmgate._core", frozen)]
pub struct PyGuest {
    pub inner: Arc<Guest>,
    pub stock: Arc<Stock>,
}

#[pymethods]
impl PyGuest {
    #[new]
    #[pyo3(signature = (engine, name, module, config, timeouts, memory_limit, allow, upstreams, max_concurrent, call_timeout, prepared))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        engine: &PyEngine,
        name: String,
        module: &PyModule,
        config: Vec<u8>,
        timeouts: [f64; 6],
        memory_limit: usize,
        allow: Vec<String>,
        upstreams: Vec<String>,
        max_concurrent: usize,
        call_timeout: f64,
        prepared: usize,
    ) -> PyGuest {
        let policy = CallPolicy::new(allow, upstreams, max_concurrent, Duration::from_secs_f64(call_timeout));
        let timeouts = timeouts.map(Duration::from_secs_f64);
        let guest = Arc::new(Guest::new(name, module.inner.clone(), config, timeouts, memory_limit, policy));
        let stock = Stock::new(guest.clone(), prepared, engine.inner.maker().clone());
        PyGuest { inner: guest, stock }
    }

    #[getter]
    fn name(&self) -> &str {
        &self.inner.name
    }

    /// The names of the metrics the processor declared so far, by id.
    fn metric_names(&self) -> Vec<String> {
        self.inner.metrics().names()
    }

    /// Fresh instances start from `module`, the processor's init image, from now on: `init` chose `phases`.
    fn set_image(&self, module: &PyModule, phases: u32) {
        self.inner.set_image(Image { module: module.inner.clone(), phases });
    }

    /// Starts keeping `prepared` started instances ready (on the engine's janitor thread).
    fn fill(&self) {
        self.stock.fill();
    }
}
