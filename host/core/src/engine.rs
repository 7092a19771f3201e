//! The per-process runtime: one wasmtime engine, the host calls linked once,
//! and the epoch ticker that lets a deadline cut a guest's CPU.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use wasmtime::{Config, InstanceAllocationStrategy, Linker, PoolingAllocationConfig};

use crate::failure::quoted;
use crate::instance::InstanceState;
use crate::janitor::{Janitor, Maker};
use crate::linking::{Import, Imports};
use crate::module::Module;
use crate::{hostcalls, image, wasi};

/// The largest per-request quota the config accepts: the size of a memory slot.
pub const MAX_MEMORY: usize = 2 << 30;
/// Touched memory a freed slot keeps for the next instance (memset instead of unmap and fault in again).
const KEEP_RESIDENT: usize = 256 * 1024;

pub struct Engine {
    pub engine: wasmtime::Engine,
    pub linker: Linker<InstanceState>,
    imports: Vec<Import>,
    /// How often the epoch advances: deadlines hold to within a tick, and a guest yields after half of one.
    pub tick: Duration,
    janitor: Janitor,
    _ticker: Ticker,
}

impl Engine {
    /// `max_instances`: instances alive at once (the pooling allocator's slots).
    pub fn new(max_instances: u32, tick: Duration) -> wasmtime::Result<Engine> {
        let mut pool = PoolingAllocationConfig::new();
        pool.total_core_instances(max_instances)
            .total_memories(max_instances)
            .total_tables(max_instances)
            // A call's fiber, and another for a `cabi_realloc` a host call makes from it.
            .total_stacks(max_instances.saturating_mul(2))
            .max_memory_size(MAX_MEMORY)
            .linear_memory_keep_resident(KEEP_RESIDENT)
            .table_keep_resident(KEEP_RESIDENT);
        let mut config = Config::new();
        config.epoch_interruption(true).allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = wasmtime::Engine::new(&config)?;
        let mut imports = Imports::new(&engine);
        hostcalls::define(&mut imports)?;
        wasi::define(&mut imports)?;
        let (linker, imports) = imports.finish();
        let ticker = Ticker::start(engine.clone(), tick);
        let janitor = Janitor::start(engine.clone(), tick);
        Ok(Engine { engine, linker, imports, tick, janitor, _ticker: ticker })
    }

    /// What makes this engine's sandboxes.
    pub fn maker(&self) -> &Maker {
        &self.janitor.maker
    }

    /// Compiles, checks and links a module; instrumented for init images when wizer can take one.
    pub fn compile(&self, name: &str, wasm: &[u8]) -> Result<Module, String> {
        if !wasm.starts_with(b"\0asm") {
            return Err(format!(
                "module {} is not a WebAssembly module (a .wasm file starts with \\0asm)",
                quoted(name)
            ));
        }
        if wasm.get(6..8) == Some(&[1, 0]) {
            // A binary's layer field: 0 for a core module, 1 for a component.
            return Err(format!(
                "module {} is a WebAssembly component; the gateway runs core modules of its world (see wit/)",
                quoted(name)
            ));
        }
        // Instrumenting adds exports: should they clash with the module's own, it goes uninstrumented.
        let instrumented = image::instrument(wasm).and_then(|bytes| wasmtime::Module::new(&self.engine, &bytes).ok());
        if let Some(compiled) = instrumented {
            return Module::link(name, compiled, Some(Arc::from(wasm)), &self.linker);
        }
        let compiled = wasmtime::Module::new(&self.engine, wasm).map_err(|error| {
            let reason = format!("{error:#}");
            let first = reason.lines().next().unwrap_or_default().to_owned();
            format!("module {} is not valid WebAssembly: {first}", quoted(name))
        })?;
        // `load` tells an instrumented artifact by these names: a module may not fake one.
        if let Some(export) = compiled.exports().find(|export| export.name().starts_with(image::RESERVED)) {
            let export = quoted(export.name());
            return Err(format!(
                "module {} exports {export}: names starting {} are the gateway's",
                quoted(name),
                image::RESERVED
            ));
        }
        Module::link(name, compiled, None, &self.linker)
    }

    /// Links a module compiled before (`Module::serialize`) from `wasm`; without `wasm`, its
    /// instances cannot be snapshotted.
    ///
    /// # Safety
    /// `artifact` must be what `serialize` made of `wasm`, unchanged: wasmtime
    /// runs the native code in it. The gateway keeps artifacts in a directory
    /// only its user can write, written whole or not at all.
    pub unsafe fn load(&self, name: &str, artifact: &[u8], wasm: Option<&[u8]>) -> Result<Module, String> {
        // SAFETY: as the caller promises.
        let compiled = unsafe { wasmtime::Module::deserialize(&self.engine, artifact) }
            .map_err(|error| format!("the compiled artifact of {} is unusable: {error}", quoted(name)))?;
        let source = wasm.filter(|_| compiled.get_export(image::INSTRUMENTED).is_some()).map(Arc::from);
        Module::link(name, compiled, source, &self.linker)
    }

    /// Names compiled artifacts: code compiled by another engine version or config is never loaded.
    pub fn artifact_tag(&self) -> String {
        let mut hasher = DefaultHasher::new();
        self.engine.precompile_compatibility_hash().hash(&mut hasher);
        image::INSTRUMENTED.hash(&mut hasher); // artifacts from before modules were instrumented are not used
        format!("wasmtime-{:016x}", hasher.finish())
    }

    /// Every import the host defines, with its flat core signature.
    pub fn imports(&self) -> &[Import] {
        &self.imports
    }
}

/// Advances the engine's epoch every tick, on a thread of its own, until dropped.
///
/// The thread holds the engine, so no tick ever reaches a freed one, at exit or any time.
struct Ticker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Ticker {
    fn start(engine: wasmtime::Engine, tick: Duration) -> Ticker {
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::Builder::new()
            .name("wasmgate-epoch".into())
            .spawn(move || {
                while !stopping.load(Ordering::Relaxed) {
                    std::thread::sleep(tick);
                    engine.increment_epoch();
                }
            })
            .expect("the epoch ticker's thread starts");
        Ticker { stop, thread: Some(thread) }
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
