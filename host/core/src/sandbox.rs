//! One processor instance serving one request, driven by polling.
//!
//! Every call into the guest (starting the instance, a hook, resuming a
//! paused hook) is a future that owns the instance's store while it runs.
//! The caller starts a call and polls it with a no-op waker; a poll returns
//!
//! - `Done`: the call finished (its action, or the phases `init` chose);
//! - `Yielded`: the guest ran half an epoch tick or more, so it handed
//!   control back (or the call was made not to run yet); poll again when it
//!   is its turn;
//! - `Waiting`: a host call asked the gateway something (`request`); answer
//!   it (`answer`), then poll again;
//! - `Failed`: the call failed (`failure` says how); the instance is gone.
//!
//! Deadlines are wall-clock: a hook's deadline starts when the hook is
//! called and covers copying its data in, the call, its post-return, its
//! host calls and every wait in between, and `on-resume` runs in what is
//! left of it. The epoch callback cuts a guest that runs past it.

use std::any::Any;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use wasmtime::{Instance, Store, TypedFunc, UpdateDeadline};

use crate::abi::{ALL_PHASES, CONTINUE, Hook, PAUSE, RESPOND};
use crate::events::Events;
use crate::exchange::Exchange;
use crate::failure::{Cause, Failure, classify};
use crate::guest::Guest;
use crate::image;
use crate::instance::{Binding, Exports, InstanceState, LocalResponse, deadline_passed};
use crate::janitor::Maker;
use crate::memory::{bytes, le_u32, lower, text_prefix};
use crate::module::{ExportIndex, Module};
use crate::requests::{HostAnswer, HostRequest, Shared};

/// The longest error message an `init` may return that is kept.
const MAX_INIT_ERROR_BYTES: usize = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Done(u32),
    Yielded,
    Waiting,
    Failed,
}

/// A body handed to a hook: bytes the sandbox reads while the hook runs.
pub struct Body {
    ptr: *const u8,
    len: usize,
    _owner: Box<dyn Any + Send>,
}

// SAFETY: the bytes are immutable and kept alive by `_owner`, which is Send.
unsafe impl Send for Body {}

impl Body {
    pub fn owned(data: Vec<u8>) -> Body {
        let (ptr, len) = (data.as_ptr(), data.len());
        Body { ptr, len, _owner: Box::new(data) }
    }

    /// # Safety
    /// `len` bytes at `ptr` stay valid and unchanged for as long as `owner` lives.
    pub unsafe fn borrowed(ptr: *const u8, len: usize, owner: Box<dyn Any + Send>) -> Body {
        Body { ptr, len, _owner: owner }
    }

    fn as_slice(&self) -> &[u8] {
        // SAFETY: as `borrowed` requires, or a Vec this Body owns.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

/// The instance's functions the host calls, found once per instance.
struct Funcs {
    init: TypedFunc<(u32, u32), u32>,
    headers: [TypedFunc<u32, u32>; 2],
    body: [TypedFunc<(u32, u32, u32), u32>; 2],
    done: TypedFunc<(), ()>,
    resume: TypedFunc<(), u32>,
    /// `cabi_post_*` of the hooks returning a value, by `Hook::index`.
    post_returns: [Option<TypedFunc<u32, ()>>; 5],
    post_done: Option<TypedFunc<(), ()>>,
}

struct Parts {
    store: Store<InstanceState>,
    funcs: Option<Funcs>,
    /// The instance once made, and the module it was made from.
    instance: Option<(Instance, Module)>,
}

type Outcome = Result<u32, Failure>;
type Running = Pin<Box<dyn Future<Output = (Box<Parts>, Outcome)> + Send>>;

enum Slot {
    Idle(Box<Parts>),
    Running(Running),
    Gone,
}

#[derive(Clone, Copy)]
struct Phase {
    hook: Hook,
    deadline: Instant,
    timeout: Duration,
}

pub struct Sandbox {
    maker: Maker,
    shared: Arc<Shared>,
    slot: Slot,
    /// The phase of the call running or paused, and its deadline.
    phase: Option<Phase>,
    failure: Option<Failure>,
    peak_memory: usize,
    memory_size: usize,
}

impl Sandbox {
    /// A store for one instance of `guest`; `start` makes the instance. See `Maker::sandbox`.
    pub(crate) fn new(maker: Maker, guest: Arc<Guest>) -> Sandbox {
        let shared = Arc::new(Shared::default());
        let mut store = Store::new(&maker.engine, InstanceState::new(guest, shared.clone()));
        store.limiter(|state| &mut state.quota);
        let tick = maker.tick;
        store.epoch_deadline_callback(move |context| {
            let state = context.data();
            let now = Instant::now();
            if now >= state.deadline {
                return Err(state.deadline_passed().into());
            }
            // A tick can land in a trivial call: only a guest that ran half a tick yields, so a
            // slice is half a tick to a tick and a half, and the loop is never held for two.
            let ran = now.duration_since(state.shared.lock().slice_started);
            Ok(if ran >= tick / 2 { UpdateDeadline::Yield(1) } else { UpdateDeadline::Continue(1) })
        });
        store.set_epoch_deadline(1);
        let parts = Box::new(Parts { store, funcs: None, instance: None });
        Sandbox { maker, shared, slot: Slot::Idle(parts), phase: None, failure: None, peak_memory: 0, memory_size: 0 }
    }

    pub fn alive(&self) -> bool {
        !matches!(self.slot, Slot::Gone)
    }

    /// Discards the instance; the janitor frees its slot for the next.
    pub fn close(&mut self) {
        self.discard();
    }

    fn discard(&mut self) {
        match std::mem::replace(&mut self.slot, Slot::Gone) {
            Slot::Idle(parts) => self.maker.dispose(parts),
            Slot::Running(running) => self.maker.dispose(Box::new(running)),
            Slot::Gone => {}
        }
    }

    pub fn failure(&self) -> Option<&Failure> {
        self.failure.as_ref()
    }

    pub fn peak_memory(&self) -> usize {
        self.peak_memory
    }

    /// Guest memory after the last call.
    pub fn memory_size(&self) -> usize {
        self.memory_size
    }

    // -- calls ---------------------------------------------------------------

    /// Makes the instance and runs `_initialize` and `init` with the processor's config, under init's deadline.
    ///
    /// Like every call: its deadline starts now; it runs at once when `now`, else it returns
    /// `Yielded` without running, to be polled in its turn.
    pub fn start(&mut self, now: bool) -> Status {
        self.begin(Hook::Init, now, |mut parts, deadline| {
            Box::pin(async move {
                let outcome = start(&mut parts, deadline).await;
                (parts, outcome)
            })
        })
    }

    /// Calls `hook`; a body hook gets `body`.
    pub fn call(&mut self, hook: Hook, body: Option<Body>, end_of_stream: bool, now: bool) -> Status {
        self.begin(hook, now, |mut parts, deadline| {
            Box::pin(async move {
                let outcome = run_hook(&mut parts, hook, body, end_of_stream, deadline).await;
                (parts, outcome)
            })
        })
    }

    /// Calls `on-resume` for a paused `hook`, in what is left of its deadline.
    pub fn resume(&mut self, hook: Hook, now: bool) -> Status {
        let parts = match self.take_idle("resume") {
            Ok(parts) => parts,
            Err(failed) => return failed,
        };
        let state = parts.store.data();
        self.phase = Some(Phase { hook, deadline: state.deadline, timeout: state.guest.timeouts[hook.index()] });
        if Instant::now() >= state.deadline {
            let failure = state.deadline_passed();
            self.slot = Slot::Idle(parts);
            return self.fail(failure);
        }
        self.slot = Slot::Running(Box::pin(async move {
            let mut parts = parts;
            let outcome = resume(&mut parts, hook).await;
            (parts, outcome)
        }));
        if now { self.poll() } else { Status::Yielded }
    }

    /// The idle instance, taken out to run a call; the sandbox fails when it has none.
    fn take_idle(&mut self, call: &str) -> Result<Box<Parts>, Status> {
        match std::mem::replace(&mut self.slot, Slot::Gone) {
            Slot::Idle(parts) => Ok(parts),
            other => {
                self.slot = other;
                Err(self.fail(Failure::new(Cause::HostError, format!("{call} on a sandbox that is not idle"))))
            }
        }
    }

    fn begin(&mut self, hook: Hook, now: bool, make: impl FnOnce(Box<Parts>, Instant) -> Running) -> Status {
        let parts = match self.take_idle(hook.phase()) {
            Ok(parts) => parts,
            Err(failed) => return failed,
        };
        let timeout = parts.store.data().guest.timeouts[hook.index()];
        let deadline = Instant::now() + timeout;
        self.phase = Some(Phase { hook, deadline, timeout });
        self.slot = Slot::Running(make(parts, deadline));
        if now { self.poll() } else { Status::Yielded }
    }

    /// Fails a call that yielded once its phase's deadline has passed, without running it again:
    /// for a call waiting for its turn. `Yielded` while it may run on.
    pub fn expire(&mut self) -> Status {
        match (&self.slot, self.phase) {
            (Slot::Running(_), Some(phase)) if Instant::now() >= phase.deadline => {
                self.fail(deadline_passed(phase.hook, phase.timeout))
            }
            (Slot::Running(_), _) => Status::Yielded,
            _ => self.fail(Failure::new(Cause::HostError, "expire of a sandbox with no call running")),
        }
    }

    /// Runs the call on until it finishes, yields, or waits for the gateway.
    pub fn poll(&mut self) -> Status {
        let Slot::Running(running) = &mut self.slot else {
            return self.fail(Failure::new(Cause::HostError, "a poll of a sandbox with no call running"));
        };
        self.shared.lock().slice_started = Instant::now();
        let mut context = Context::from_waker(Waker::noop());
        match catch_unwind(AssertUnwindSafe(|| running.as_mut().poll(&mut context))) {
            Ok(Poll::Pending) if self.shared.is_waiting() => Status::Waiting,
            Ok(Poll::Pending) => Status::Yielded,
            Ok(Poll::Ready((parts, outcome))) => {
                self.note_memory(&parts);
                self.slot = Slot::Idle(parts);
                match outcome {
                    Ok(value) => Status::Done(value),
                    Err(failure) => self.fail(failure),
                }
            }
            Err(panic) => {
                // The call may have stopped anywhere: what it held is dropped, not reused.
                self.slot = Slot::Gone;
                self.fail(Failure::new(Cause::HostError, format!("the host panicked: {}", message(&*panic))))
            }
        }
    }

    /// Polls until the call finishes or waits for the gateway: for callers with no event loop to share.
    pub fn run_blocking(&mut self) -> Status {
        loop {
            match self.poll() {
                Status::Yielded => continue,
                status => return status,
            }
        }
    }

    fn fail(&mut self, failure: Failure) -> Status {
        self.discard();
        self.failure = Some(failure);
        Status::Failed
    }

    fn note_memory(&mut self, parts: &Parts) {
        let state = parts.store.data();
        self.peak_memory = self.peak_memory.max(state.quota.peak);
        if parts.funcs.is_some() {
            self.memory_size = state.exports().memory.data_size(&parts.store);
        }
    }

    // -- the gateway's side ----------------------------------------------------

    pub fn request(&self) -> Option<HostRequest> {
        self.shared.request()
    }

    pub fn answer(&mut self, answer: HostAnswer) -> bool {
        self.shared.answer(answer)
    }

    /// Log lines and metric records waiting to be drained.
    pub fn drain(&mut self) -> Events {
        self.shared.lock().events.take()
    }

    pub fn has_events(&self) -> bool {
        !self.shared.lock().events.is_empty()
    }

    fn idle(&mut self) -> Option<&mut InstanceState> {
        match &mut self.slot {
            Slot::Idle(parts) => Some(parts.store.data_mut()),
            _ => None,
        }
    }

    /// Serves `exchange` as processor `index` of its route, from the next call on.
    pub fn bind(&mut self, exchange: Exchange, index: usize) {
        let held = exchange.lock().scopes[index].calls.held_bytes();
        if let Some(state) = self.idle() {
            state.quota.calls = held;
            state.binding = Some(Binding { exchange, index });
        }
        self.shared.lock().events.new_request();
    }

    /// Forgets the request it served, before a pooled instance serves another.
    pub fn unbind(&mut self) {
        if let Some(state) = self.idle() {
            state.binding = None;
            state.quota.calls = 0;
            state.clear_outputs();
        }
        let mut mailbox = self.shared.lock();
        mailbox.events.take();
        mailbox.events.new_request();
    }

    /// The body the last hook set (`replace-body`), if it set one.
    pub fn take_body(&mut self) -> Option<Vec<u8>> {
        let state = self.idle()?;
        state.quota.body = 0;
        state.replaced_body.take()
    }

    /// The local response the last hook set (`send-response`).
    pub fn take_response(&mut self) -> Option<LocalResponse> {
        let state = self.idle()?;
        state.quota.response = 0;
        state.local_response.take()
    }

    /// Fails the processor when its memory and what the host holds for it
    /// (its finished sub-requests' answers) pass its quota.
    pub fn check_held(&mut self) -> Status {
        let Slot::Idle(parts) = &mut self.slot else {
            return self.fail(Failure::new(Cause::HostError, "check_held of a sandbox that is not idle"));
        };
        let memory = parts.store.data().exports().memory.data_size(&parts.store);
        let state = parts.store.data_mut();
        let held = match &state.binding {
            Some(binding) => binding.exchange.lock().scopes[binding.index].calls.held_bytes(),
            None => 0,
        };
        state.quota.calls = held;
        let (held, limit) = (state.quota.held(), state.quota.limit);
        if memory + held <= limit {
            return Status::Done(0);
        }
        let mib = |bytes: usize| bytes as f64 / (1 << 20) as f64;
        self.fail(Failure::memory(format!(
            "guest memory and the {:.1} MiB the host holds for it (sub-requests among them) make {:.1} MiB, \
             over its {:.1} MiB quota",
            mib(held),
            mib(memory + held),
            mib(limit)
        )))
    }

    /// The processor's module rewritten to start as this instance is now: its init image (see
    /// `image`). Only for an instance that has run `init` and served no request, so nothing of a
    /// request is ever in an image; None when the module cannot be snapshotted.
    pub fn init_image(&mut self) -> Result<Option<Vec<u8>>, String> {
        let Slot::Idle(parts) = &mut self.slot else {
            return Err("a snapshot of a sandbox that is not idle".to_owned());
        };
        let Some((instance, module)) = &parts.instance else {
            return Err("a snapshot of a sandbox not started".to_owned());
        };
        let state = parts.store.data();
        if state.binding.is_some() || state.phase.is_some_and(|hook| hook != Hook::Init) {
            return Err("a snapshot of a sandbox that served a request".to_owned());
        }
        let Some(source) = module.0.source.clone() else { return Ok(None) };
        let instance = *instance;
        // Wizer's own bugs must not take the gateway down: a panic is an error, and no image.
        catch_unwind(AssertUnwindSafe(|| image::snapshot(&source, &mut parts.store, instance)))
            .unwrap_or_else(|panic| Err(format!("the snapshot panicked: {}", message(panic.as_ref()))))
            .map(Some)
    }

    /// Bytes the guest may still take before its quota: what a sub-request's answer may use.
    pub fn quota_left(&self) -> usize {
        match &self.slot {
            Slot::Idle(parts) => {
                let memory = parts.store.data().exports().memory.data_size(&parts.store);
                parts.store.data().quota.room(memory)
            }
            _ => 0,
        }
    }

    /// What is left of the running (or paused) phase's deadline.
    pub fn remaining(&self) -> Duration {
        self.phase.map_or(Duration::ZERO, |phase| phase.deadline.saturating_duration_since(Instant::now()))
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.discard();
    }
}

fn message(panic: &(dyn Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|text| text.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned())
}

/// Makes the instance: from the processor's init image when it has one (nothing left to run), else
/// from its module, then `_initialize` and `init`.
async fn start(parts: &mut Parts, deadline: Instant) -> Outcome {
    let store = &mut parts.store;
    store.data_mut().deadline = deadline;
    let guest = store.data().guest.clone();
    // A retry's instance runs `init` itself, to see the checkpoint the failed try left.
    let image = guest.image().filter(|_| !store.data().has_checkpoint());
    let module = image.map_or(&guest.module, |image| &image.module);
    let exports = &module.0.exports;
    // The start function runs outside any hook: host calls from it are refused.
    let instance = module.0.pre.instantiate_async(&mut *store).await.map_err(classify)?;
    let funcs = instance_funcs(store, instance, exports)?;
    parts.instance = Some((instance, module.clone()));
    if let Some(image) = image {
        parts.funcs = Some(funcs);
        return Ok(image.phases);
    }
    store.data_mut().enter(Hook::Init, deadline);
    if let Some(initialize) = &exports.initialize {
        let initialize: TypedFunc<(), ()> = typed(store, instance, initialize)?;
        initialize.call_async(&mut *store, ()).await.map_err(classify)?;
    }
    let len = guest.config.len() as u32;
    let ptr = lower(store, &guest.config, 1, "the config").await?;
    let result = funcs.init.call_async(&mut *store, (ptr, len)).await.map_err(classify)?;
    let area = {
        let memory = store.data().exports().memory.data(&*store);
        bytes(memory, result, 12, "init's result")?.to_vec()
    };
    let (tag, payload, length) = (area[0], le_u32(&area[4..8]), le_u32(&area[8..12]));
    if tag > 1 {
        return Err(Failure::abi(format!("init returned result tag {tag}")));
    }
    let error = if tag == 1 {
        let memory = store.data().exports().memory.data(&*store);
        Some(text_prefix(memory, payload, length, MAX_INIT_ERROR_BYTES, "init's error")?.to_owned())
    } else {
        None
    };
    if let Some(post) = &funcs.post_returns[Hook::Init.index()] {
        post.call_async(&mut *store, result).await.map_err(classify)?;
    }
    parts.funcs = Some(funcs);
    match error {
        Some(error) => Err(Failure::new(Cause::InitFailed, error)),
        None => Ok(payload & ALL_PHASES),
    }
}

/// The functions the host calls in `instance`, found through `exports`; its memory and
/// `cabi_realloc` go to the store, for host calls.
fn instance_funcs(
    store: &mut Store<InstanceState>,
    instance: Instance,
    exports: &ExportIndex,
) -> Result<Funcs, Failure> {
    let memory = instance
        .get_module_export(&mut *store, &exports.memory)
        .and_then(|e| e.into_memory())
        .ok_or_else(|| Failure::new(Cause::HostError, "the memory checked at load is missing"))?;
    let realloc = typed(store, instance, &exports.realloc)?;
    store.data_mut().set_exports(Exports { memory, realloc });
    let hooks = &exports.hooks;
    let mut post_returns: [Option<TypedFunc<u32, ()>>; 5] = Default::default();
    for (slot, export) in post_returns.iter_mut().zip(&exports.post_returns) {
        if let Some(export) = export {
            *slot = Some(typed(store, instance, export)?);
        }
    }
    Ok(Funcs {
        init: typed(store, instance, &hooks[Hook::Init.index()])?,
        headers: [
            typed(store, instance, &hooks[Hook::RequestHeaders.index()])?,
            typed(store, instance, &hooks[Hook::ResponseHeaders.index()])?,
        ],
        body: [
            typed(store, instance, &hooks[Hook::RequestBody.index()])?,
            typed(store, instance, &hooks[Hook::ResponseBody.index()])?,
        ],
        done: typed(store, instance, &hooks[Hook::Done.index()])?,
        resume: typed(store, instance, &exports.resume)?,
        post_returns,
        post_done: match &exports.post_returns[Hook::Done.index()] {
            Some(export) => Some(typed(store, instance, export)?),
            None => None,
        },
    })
}

/// An export of `instance` as a typed function.
fn typed<P: wasmtime::WasmParams, R: wasmtime::WasmResults>(
    store: &mut Store<InstanceState>,
    instance: wasmtime::Instance,
    export: &wasmtime::ModuleExport,
) -> Result<TypedFunc<P, R>, Failure> {
    let func = instance.get_module_export(&mut *store, export).and_then(|e| e.into_func());
    let func = func.ok_or_else(|| Failure::new(Cause::HostError, "an export checked at load is missing"))?;
    // SAFETY: `Module::link` checked every export's type against the one the host calls it with.
    Ok(unsafe { TypedFunc::new_unchecked(&*store, func) })
}

async fn run_hook(
    parts: &mut Parts,
    hook: Hook,
    body: Option<Body>,
    end_of_stream: bool,
    deadline: Instant,
) -> Outcome {
    let Some(funcs) = &parts.funcs else {
        return Err(Failure::new(Cause::HostError, "a hook called on a sandbox that was never started"));
    };
    let store = &mut parts.store;
    store.data_mut().enter(hook, deadline);
    let eos = u32::from(end_of_stream);
    let side = usize::from(hook.is_response());
    let action = match hook {
        Hook::RequestHeaders | Hook::ResponseHeaders => funcs.headers[side].call_async(&mut *store, eos).await,
        Hook::RequestBody | Hook::ResponseBody => {
            let body = body.as_ref().map_or(&[][..], Body::as_slice);
            let ptr = lower(store, body, 1, "the body").await?;
            funcs.body[side].call_async(&mut *store, (ptr, body.len() as u32, eos)).await
        }
        Hook::Done => funcs.done.call_async(&mut *store, ()).await.map(|()| 0),
        Hook::Init => return Err(Failure::new(Cause::HostError, "init is called by start")),
    }
    .map_err(classify)?;
    if hook == Hook::Done {
        if let Some(post) = &funcs.post_done {
            post.call_async(&mut *store, ()).await.map_err(classify)?;
        }
        return Ok(0); // on-done returns nothing
    }
    if let Some(post) = &funcs.post_returns[hook.index()] {
        post.call_async(&mut *store, action).await.map_err(classify)?;
    }
    judge(store.data(), action)
}

async fn resume(parts: &mut Parts, hook: Hook) -> Outcome {
    let Some(funcs) = &parts.funcs else {
        return Err(Failure::new(Cause::HostError, "resume of a sandbox that was never started"));
    };
    let store = &mut parts.store;
    store.data_mut().phase = Some(hook);
    let action = funcs.resume.call_async(&mut *store, ()).await.map_err(classify)?;
    judge(store.data(), action)
}

/// What a hook's returned action means, or the ABI rule it broke.
fn judge(state: &InstanceState, action: u32) -> Outcome {
    match action {
        CONTINUE if state.local_response.is_some() => {
            Err(Failure::abi("the hook called send-response but returned continue"))
        }
        RESPOND if state.local_response.is_none() => {
            Err(Failure::abi("the hook returned respond without calling send-response"))
        }
        PAUSE if !waits_on_calls(state) => Err(Failure::abi("the hook returned pause with nothing to wait for")),
        CONTINUE | RESPOND | PAUSE => Ok(action),
        other => Err(Failure::abi(format!("the hook returned {other}, which is not an action"))),
    }
}

fn waits_on_calls(state: &InstanceState) -> bool {
    state.binding.as_ref().is_some_and(|binding| binding.exchange.lock().scopes[binding.index].calls.has_started())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::calls::CallPolicy;
    use crate::engine::Engine;

    fn sandbox() -> Sandbox {
        let engine = Engine::new(4, Duration::from_millis(1)).expect("an engine");
        let processor = wat::parse_str(format!(
            r#"(module (memory (export "memory") 1)
              (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32) i32.const 8)
              (func (export "{h}#init") (param i32 i32) (result i32) i32.const 0)
              (func (export "{h}#on-request-headers") (param i32) (result i32) i32.const 0)
              (func (export "{h}#on-request-body") (param i32 i32 i32) (result i32) i32.const 0)
              (func (export "{h}#on-response-headers") (param i32) (result i32) i32.const 0)
              (func (export "{h}#on-response-body") (param i32 i32 i32) (result i32) i32.const 0)
              (func (export "{h}#on-resume") (result i32) i32.const 0)
              (func (export "{h}#on-done")))"#,
            h = crate::abi::HANDLER
        ))
        .expect("WAT");
        let module = engine.compile("p", &processor).expect("a processor");
        let policy = CallPolicy::new([], [], 1, Duration::from_secs(1));
        let guest = Guest::new("p".into(), module, b"{}".to_vec(), [Duration::from_millis(100); 6], 1 << 20, policy);
        engine.maker().sandbox(Arc::new(guest))
    }

    #[test]
    fn a_panic_in_the_host_fails_the_sandbox_with_host_error() {
        let mut sandbox = sandbox();
        fn host_call() -> (Box<Parts>, Outcome) {
            panic!("a host call went wrong")
        }
        let panicking: Running = Box::pin(async { host_call() });
        sandbox.slot = Slot::Running(panicking);
        assert_eq!(sandbox.poll(), Status::Failed);
        let failure = sandbox.failure().expect("a failure");
        assert_eq!(failure.cause, Cause::HostError);
        assert!(failure.detail.contains("a host call went wrong"), "{}", failure.detail);
        assert!(!sandbox.alive());
        assert_eq!(sandbox.call(Hook::RequestHeaders, None, false, true), Status::Failed, "it stays failed");
    }
}
