//! A processor as its sandboxes see it: the module, its config, and its limits.

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use crate::calls::CallPolicy;
use crate::metrics::MetricTable;
use crate::module::Module;

/// What every sandbox of one processor shares.
pub struct Guest {
    pub name: String,
    pub module: Module,
    /// The processor's `config`, as JSON: `init`'s argument.
    pub config: Vec<u8>,
    /// Each hook's deadline, by `Hook::index`.
    pub timeouts: [Duration; 6],
    /// Guest memory plus what the host holds for it, per request.
    pub memory_limit: usize,
    pub calls: CallPolicy,
    metrics: Mutex<MetricTable>,
}

impl Guest {
    pub fn new(
        name: String,
        module: Module,
        config: Vec<u8>,
        timeouts: [Duration; 6],
        memory_limit: usize,
        calls: CallPolicy,
    ) -> Guest {
        Guest { name, module, config, timeouts, memory_limit, calls, metrics: Mutex::default() }
    }

    pub fn metrics(&self) -> MutexGuard<'_, MetricTable> {
        self.metrics.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
