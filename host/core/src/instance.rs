//! What the host keeps for one instance, inside its store: the hook running
//! and its deadline, the request it serves, what its hooks set, and the
//! quota that bounds its memory.

use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::{Memory, ResourceLimiter, TypedFunc};

use crate::abi::Hook;
use crate::exchange::Exchange;
use crate::failure::{Cause, Failure};
use crate::guest::Guest;
use crate::requests::Shared;

/// Bounds a module's function table: generous for Rust and Go, finite for a bomb.
pub const TABLE_ELEMENTS: usize = 100_000;

const MIB: f64 = (1 << 20) as f64;

/// The exports host calls need, once the instance exists.
#[derive(Clone)]
pub struct Exports {
    pub memory: Memory,
    pub realloc: TypedFunc<(u32, u32, u32, u32), u32>,
}

/// The request an instance serves, and which processor of its route it is.
pub struct Binding {
    pub exchange: Exchange,
    pub index: usize,
}

/// A complete local response (`send-response`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// The per-request memory quota: guest memory plus what the host holds for
/// the guest. Checked before memory grows and before the host copies
/// anything it keeps; a guest that would pass it fails with `memory_limit`.
pub struct Quota {
    pub limit: usize,
    /// Held for sub-requests: the calls and their answers.
    pub calls: usize,
    /// A body the running hook replaced.
    pub body: usize,
    /// A local response the running hook set.
    pub response: usize,
    /// Log lines and metric records waiting to be drained live with the mailbox.
    shared: Arc<Shared>,
    /// The largest guest memory seen.
    pub peak: usize,
}

impl Quota {
    pub fn held(&self) -> usize {
        self.calls + self.body + self.response + self.shared.lock().events.held()
    }

    /// Fails unless `more` bytes fit beside guest memory of `memory` bytes and what is held already.
    pub fn check(&self, memory: usize, more: usize, what: &str) -> Result<(), Failure> {
        let held = self.held();
        if memory.saturating_add(held).saturating_add(more) <= self.limit {
            return Ok(());
        }
        Err(Failure::memory(format!(
            "{what}: {:.1} MiB more, with {:.1} MiB of guest memory and {:.1} MiB the host holds for it, \
             is over its {:.1} MiB quota",
            more as f64 / MIB,
            memory as f64 / MIB,
            held as f64 / MIB,
            self.limit as f64 / MIB,
        )))
    }

    /// Bytes the guest's memory may still take.
    pub fn room(&self, memory: usize) -> usize {
        self.limit.saturating_sub(memory + self.held())
    }
}

impl ResourceLimiter for Quota {
    fn memory_growing(&mut self, current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        let held = self.held();
        if desired.saturating_add(held) <= self.limit {
            self.peak = self.peak.max(desired);
            return Ok(true);
        }
        let limit = self.limit as f64 / MIB;
        let detail = if current == 0 {
            format!("the module's initial memory ({:.1} MiB) is over its {limit:.1} MiB quota", desired as f64 / MIB)
        } else if held == 0 {
            format!("guest memory grew to {:.1} MiB, over its {limit:.1} MiB quota", desired as f64 / MIB)
        } else {
            format!(
                "guest memory grew to {:.1} MiB and the host holds {:.1} MiB for it, over its {limit:.1} MiB quota",
                desired as f64 / MIB,
                held as f64 / MIB
            )
        };
        Err(Failure::memory(detail).into())
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= TABLE_ELEMENTS)
    }

    // One memory, one table, one instance: a module gets exactly its own.
    fn instances(&self) -> usize {
        1
    }

    fn tables(&self) -> usize {
        1
    }

    fn memories(&self) -> usize {
        1
    }
}

/// The failure of `hook`'s phase past its deadline of `timeout`.
pub fn deadline_passed(hook: Hook, timeout: Duration) -> Failure {
    let ms = timeout.as_secs_f64() * 1000.0;
    Failure::new(Cause::Timeout, format!("{} ran past its {ms} ms deadline", hook.phase()))
}

/// The data of an instance's store.
pub struct InstanceState {
    pub guest: Arc<Guest>,
    pub quota: Quota,
    pub shared: Arc<Shared>,
    /// The hook whose deadline runs; None while the module starts (its start function).
    pub phase: Option<Hook>,
    pub deadline: Instant,
    /// Set while a host call runs: a host call from the `cabi_realloc` it made is refused.
    pub in_host_call: bool,
    pub binding: Option<Binding>,
    /// What the running hook set through host calls.
    pub replaced_body: Option<Vec<u8>>,
    pub local_response: Option<LocalResponse>,
    exports: Option<Exports>,
}

impl InstanceState {
    pub fn new(guest: Arc<Guest>, shared: Arc<Shared>) -> InstanceState {
        let quota =
            Quota { limit: guest.memory_limit, calls: 0, body: 0, response: 0, shared: shared.clone(), peak: 0 };
        InstanceState {
            guest,
            quota,
            shared,
            phase: None,
            deadline: Instant::now(),
            in_host_call: false,
            binding: None,
            replaced_body: None,
            local_response: None,
            exports: None,
        }
    }

    /// Whether a failed try of this processor in this request left a checkpoint: its retry's `init` sees it.
    pub fn has_checkpoint(&self) -> bool {
        self.binding.as_ref().is_some_and(|binding| binding.exchange.lock().scopes[binding.index].checkpoint.is_some())
    }

    pub fn exports(&self) -> Exports {
        self.exports.clone().expect("host calls run only in an instance")
    }

    pub fn set_exports(&mut self, exports: Exports) {
        self.exports = Some(exports);
    }

    /// A hook starts: its deadline runs, and nothing it sets is left from the last one.
    pub fn enter(&mut self, hook: Hook, deadline: Instant) {
        self.phase = Some(hook);
        self.deadline = deadline;
        self.clear_outputs();
    }

    pub fn clear_outputs(&mut self) {
        self.replaced_body = None;
        self.local_response = None;
        self.quota.body = 0;
        self.quota.response = 0;
    }

    pub fn timeout(&self) -> Duration {
        self.guest.timeouts[self.phase.unwrap_or(Hook::Init).index()]
    }

    /// The failure of a phase past its deadline.
    pub fn deadline_passed(&self) -> Failure {
        deadline_passed(self.phase.unwrap_or(Hook::Init), self.timeout())
    }

    /// Fails once the deadline has passed: for host calls whose work a guest sizes.
    pub fn check_deadline(&self) -> Result<(), Failure> {
        if Instant::now() >= self.deadline { Err(self.deadline_passed()) } else { Ok(()) }
    }
}
