//! Init images: a processor's module rewritten to start where its `init` left it.
//!
//! `init` runs with the processor's config, the same for every request, so
//! each fresh instance would redo the same work: a Rust guest's allocator
//! set up, a regex compiled, a Go runtime started. Instead the gateway runs
//! it once per load, snapshots that instance's memory and globals
//! (wasmtime-wizer), and compiles a module whose data is that memory. A fresh
//! instance of it is an image mapped copy-on-write, with nothing left to run,
//! and nothing of any request in it.
//!
//! Modules are compiled instrumented (wizer exports every memory and mutable
//! global under names it knows), so any started instance can be
//! snapshotted. A module wizer cannot snapshot (one that changes its tables,
//! say) has no image: its instances run `init` each time.

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use wasmtime::{Instance, Store, Val};
use wasmtime_wizer::{SnapshotVal, ValType, Wizer};

use crate::instance::InstanceState;

/// An export only an instrumented module has: wizer's name for its first memory.
pub const INSTRUMENTED: &str = "__wizer_memory_0";
/// The start of the names wizer exports: a module's own exports may not start with it.
pub const RESERVED: &str = "__wizer_";

fn wizer() -> Wizer {
    let mut wizer = Wizer::new();
    // Run already, like `init`: the image drops the export.
    wizer.init_func("_initialize");
    wizer
}

/// `wasm` with its memories and globals exported for a snapshot, or None when wizer cannot take one.
pub fn instrument(wasm: &[u8]) -> Option<Vec<u8>> {
    wizer().instrument(wasm).ok().map(|(_, instrumented)| instrumented)
}

/// The module `wasm` rewritten to start as `instance` (of `instrument(wasm)`) is now.
pub fn snapshot(wasm: &[u8], store: &mut Store<InstanceState>, instance: Instance) -> Result<Vec<u8>, String> {
    let wizer = wizer();
    let (context, _) = wizer.instrument(wasm).map_err(|error| format!("{error:#}"))?;
    let taken = ready(wizer.snapshot(&context, &mut Snapshotted { store, instance }));
    taken.map_err(|error| format!("{error:#}"))
}

/// The value of a future that never waits: reading an instance's memory and globals does not.
fn ready<T>(future: impl Future<Output = T>) -> T {
    let mut future = pin!(future);
    match future.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(value) => value,
        Poll::Pending => unreachable!("a snapshot reads memory and globals, and never waits"),
    }
}

struct Snapshotted<'a> {
    store: &'a mut Store<InstanceState>,
    instance: Instance,
}

impl wasmtime_wizer::InstanceState for Snapshotted<'_> {
    async fn global_get(&mut self, name: &str, _: ValType) -> SnapshotVal {
        let global = self.instance.get_global(&mut *self.store, name).expect("instrumented: every global exported");
        // Wizer refuses modules with reference-typed mutable globals: the rest are numbers.
        match global.get(&mut *self.store) {
            Val::I32(x) => SnapshotVal::I32(x),
            Val::I64(x) => SnapshotVal::I64(x),
            Val::F32(x) => SnapshotVal::F32(x),
            Val::F64(x) => SnapshotVal::F64(x),
            Val::V128(x) => SnapshotVal::V128(x.as_u128()),
            other => unreachable!("a mutable global of type {:?}", other.ty(&*self.store)),
        }
    }

    async fn memory_contents(&mut self, name: &str, contents: impl FnOnce(&[u8]) + Send) {
        let memory = self.instance.get_memory(&mut *self.store, name).expect("instrumented: every memory exported");
        contents(memory.data(&*self.store));
    }
}
