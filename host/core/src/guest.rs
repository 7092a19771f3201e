//! A processor as its sandboxes see it: the module, its config, and its limits.

use std::sync::{Mutex, MutexGuard, OnceLock};
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
    image: OnceLock<Image>,
}

/// The module rewritten to start where `init` left it (see `image`), and the phases `init` chose.
pub struct Image {
    pub module: Module,
    pub phases: u32,
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
        Guest { name, module, config, timeouts, memory_limit, calls, metrics: Mutex::default(), image: OnceLock::new() }
    }

    /// Fresh instances start from `image` from now on, without running `init`; the first image set stays.
    pub fn set_image(&self, image: Image) {
        let _ = self.image.set(image);
    }

    pub fn image(&self) -> Option<&Image> {
        self.image.get()
    }

    pub fn metrics(&self) -> MutexGuard<'_, MetricTable> {
        self.metrics.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
