//! The sandbox driven as the gateway drives it, with guests written in WAT.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use wasmgate_core::abi::{HANDLER, HOST_MODULE, Hook};
use wasmgate_core::calls::CallPolicy;
use wasmgate_core::engine::Engine;
use wasmgate_core::exchange::{Exchange, Facts};
use wasmgate_core::failure::Cause;
use wasmgate_core::guest::{Guest, Image};
use wasmgate_core::headers::HeaderMap;
use wasmgate_core::requests::{HostAnswer, HostRequest};
use wasmgate_core::sandbox::{Body, Sandbox, Status};

fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| Engine::new(64, Duration::from_millis(1)).expect("an engine"))
}

const SPIN: &str = "(loop $forever (br $forever)) unreachable";
/// Sets the request header `x-name: value`.
const SET_HEADER: &str =
    "i32.const 0 i32.const 1024 i32.const 6 i32.const 1040 i32.const 5 call $set-header i32.const 0";

/// A guest asking for every phase whose hooks are the given instructions (each leaving an action).
fn guest(request_headers: &str, request_body: &str) -> String {
    let imports: String = engine()
        .imports()
        .iter()
        .filter(|import| import.module == HOST_MODULE)
        .map(|import| format!("(import \"{HOST_MODULE}\" \"{0}\" (func ${0} {1}))\n", import.name, import.wat()))
        .collect();
    format!(
        r#"(module
  {imports}
  (memory (export "memory") 1)
  (global $heap (mut i32) (i32.const 4096))
  (data (i32.const 1024) "x-name")
  (data (i32.const 1040) "value")
  (data (i32.const 1056) "counter")
  (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32)
    (local $p i32)
    global.get $heap local.set $p
    global.get $heap local.get 3 i32.add global.set $heap
    (block $ok (loop $grow
      global.get $heap memory.size i32.const 16 i32.shl i32.le_u br_if $ok
      i32.const 1 memory.grow i32.const -1 i32.eq if unreachable end
      br $grow))
    local.get $p)
  (func (export "{HANDLER}#init") (param i32 i32) (result i32)
    i32.const 0 i32.const 0 i32.store8 i32.const 4 i32.const 31 i32.store8 i32.const 0)
  (func (export "{HANDLER}#on-request-headers") (param i32) (result i32) {request_headers})
  (func (export "{HANDLER}#on-request-body") (param i32 i32 i32) (result i32) {request_body})
  (func (export "{HANDLER}#on-response-headers") (param i32) (result i32) i32.const 0)
  (func (export "{HANDLER}#on-response-body") (param i32 i32 i32) (result i32) i32.const 0)
  (func (export "{HANDLER}#on-resume") (result i32) i32.const 0)
  (func (export "{HANDLER}#on-done"))
)"#
    )
}

fn sandbox(wat: &str, timeout_ms: u64, memory_limit: usize) -> Sandbox {
    let wasm = wat::parse_str(wat).expect("valid WAT");
    let module = engine().compile("test", &wasm).expect("a module of the world");
    let calls = CallPolicy { max_concurrent: 4, timeout: Duration::from_secs(1), ..CallPolicy::default() };
    let timeouts = [Duration::from_millis(timeout_ms); 6];
    let guest = Guest::new("test".into(), module, b"{}".to_vec(), timeouts, memory_limit, calls);
    engine().maker().sandbox(Arc::new(guest))
}

fn exchange() -> Exchange {
    let facts = Facts { tenant: "acme".into(), ..Facts::default() };
    Exchange::new(facts, HeaderMap::default(), "http://upstream.test".into(), 1)
}

fn started(wat: &str, timeout_ms: u64) -> (Sandbox, Exchange) {
    let mut sandbox = sandbox(wat, timeout_ms, 1 << 20);
    assert_eq!(start(&mut sandbox), Status::Done(31), "init chose every phase");
    let exchange = exchange();
    sandbox.bind(exchange.clone(), 0);
    (sandbox, exchange)
}

/// Starts the sandbox, polling through its yields.
fn start(sandbox: &mut Sandbox) -> Status {
    match sandbox.start(true) {
        Status::Yielded => sandbox.run_blocking(),
        status => status,
    }
}

fn finish(sandbox: &mut Sandbox, mut status: Status) -> (Status, u32) {
    let mut yields = 0;
    while status == Status::Yielded {
        yields += 1;
        status = sandbox.poll();
    }
    (status, yields)
}

#[test]
fn a_hook_changes_the_exchange_through_host_calls() {
    let (mut sandbox, exchange) = started(&guest(SET_HEADER, "i32.const 0"), 100);
    assert_eq!(sandbox.call(Hook::RequestHeaders, None, false, true), Status::Done(0));
    assert_eq!(exchange.lock().request_headers.get("X-Name"), Some("value"));
}

#[test]
fn a_call_made_for_a_later_turn_runs_only_when_polled() {
    let (mut sandbox, exchange) = started(&guest(SET_HEADER, "i32.const 0"), 100);
    assert_eq!(sandbox.call(Hook::RequestHeaders, None, false, false), Status::Yielded);
    assert_eq!(exchange.lock().request_headers.get("X-Name"), None, "not run yet");
    assert_eq!(sandbox.poll(), Status::Done(0));
    assert_eq!(exchange.lock().request_headers.get("X-Name"), Some("value"));
}

#[test]
fn a_call_waiting_past_its_deadline_expires_without_running() {
    let (mut sandbox, exchange) = started(&guest(SET_HEADER, "i32.const 0"), 20);
    assert_eq!(sandbox.call(Hook::RequestHeaders, None, false, false), Status::Yielded);
    assert_eq!(sandbox.expire(), Status::Yielded, "within its deadline it may run on");
    std::thread::sleep(Duration::from_millis(25));
    assert_eq!(sandbox.expire(), Status::Failed);
    let failure = sandbox.failure().unwrap();
    assert_eq!(
        (failure.cause, failure.detail.as_str()),
        (Cause::Timeout, "request_headers ran past its 20 ms deadline")
    );
    assert_eq!(exchange.lock().request_headers.get("X-Name"), None, "the guest never ran");
}

#[test]
fn a_spinning_guest_yields_every_tick_until_its_deadline_cuts_it() {
    let (mut sandbox, _) = started(&guest(SPIN, "i32.const 0"), 50);
    let first = sandbox.call(Hook::RequestHeaders, None, false, true);
    let (status, yields) = finish(&mut sandbox, first);
    assert_eq!(status, Status::Failed);
    let failure = sandbox.failure().unwrap();
    assert_eq!(failure.cause, Cause::Timeout);
    assert_eq!(failure.detail, "request_headers ran past its 50 ms deadline");
    assert!(yields >= 2, "a long guest hands control back at ticks ({yields} yields)");
    assert!(!sandbox.alive());
}

#[test]
fn a_guest_growing_past_its_quota_fails_with_memory_limit() {
    let grow = "i32.const 32 memory.grow drop i32.const 0";
    let (mut sandbox, _) = started(&guest(grow, "i32.const 0"), 100);
    assert_eq!(sandbox.call(Hook::RequestHeaders, None, false, true), Status::Failed);
    let failure = sandbox.failure().unwrap();
    assert_eq!(failure.cause, Cause::MemoryLimit);
    assert!(failure.detail.contains("over its 1.0 MiB quota"), "{}", failure.detail);
}

#[test]
fn a_body_is_copied_into_guest_memory() {
    // Replaces the body with its own first three bytes.
    let echo = "local.get 0 i32.const 3 call $replace-body i32.const 0";
    let (mut sandbox, _) = started(&guest("i32.const 0", echo), 100);
    let status = sandbox.call(Hook::RequestBody, Some(Body::owned(b"hello".to_vec())), true, true);
    assert_eq!(status, Status::Done(0));
    assert_eq!(sandbox.take_body(), Some(b"hel".to_vec()));
}

#[test]
fn a_state_call_waits_for_the_gateways_answer() {
    let add = "i32.const 1056 i32.const 7 i64.const 5 i32.const 1000 i32.const 0 i64.const 0 i32.const 2048 \
               call $counter-add i32.const 2048 i64.load i32.wrap_i64 i32.const 100 i32.add";
    let (mut sandbox, _) = started(&guest(add, "i32.const 0"), 1000);
    assert_eq!(sandbox.call(Hook::RequestHeaders, None, false, true), Status::Waiting);
    let Some(HostRequest::CounterAdd { key, delta, window_ms, limit, .. }) = sandbox.request() else {
        panic!("a counter-add request")
    };
    assert_eq!((key.as_slice(), delta, window_ms, limit), (&b"acme\0test\0counter"[..], 5, 1000, None));
    assert!(sandbox.answer(HostAnswer::Counter { value: 7, reset_ms: 900, applied: true }));
    // The guest returns the counter's value + 100: not an action, so an ABI violation naming it.
    assert_eq!(sandbox.poll(), Status::Failed);
    assert!(sandbox.failure().unwrap().detail.contains("returned 107"), "{:?}", sandbox.failure());
}

#[test]
fn a_host_call_from_a_start_function_is_refused() {
    let wat = guest("i32.const 0", "i32.const 0").replace(
        "(global $heap",
        "(func $start i32.const 0 i32.const 0 i32.const 0 call $log) (start $start)\n  (global $heap",
    );
    let mut sandbox = sandbox(&wat, 100, 1 << 20);
    assert_eq!(start(&mut sandbox), Status::Failed);
    let failure = sandbox.failure().unwrap();
    assert_eq!(failure.cause, Cause::AbiViolation);
    assert!(failure.detail.contains("start function"), "{}", failure.detail);
}

#[test]
fn a_start_function_that_spins_fails_with_timeout() {
    let wat = guest("i32.const 0", "i32.const 0")
        .replace("(global $heap", &format!("(func $start {SPIN}) (start $start)\n  (global $heap"));
    let mut sandbox = sandbox(&wat, 30, 1 << 20);
    assert_eq!(start(&mut sandbox), Status::Failed);
    assert_eq!(sandbox.failure().unwrap().cause, Cause::Timeout);
}

#[test]
fn a_module_whose_initial_memory_passes_the_quota_fails_with_memory_limit() {
    let wat = guest("i32.const 0", "i32.const 0")
        .replace("(memory (export \"memory\") 1)", "(memory (export \"memory\") 40)");
    let mut sandbox = sandbox(&wat, 100, 1 << 20);
    assert_eq!(start(&mut sandbox), Status::Failed);
    assert_eq!(sandbox.failure().unwrap().cause, Cause::MemoryLimit);
}

#[test]
fn every_host_import_of_the_world_is_defined_once() {
    let names: Vec<_> = engine().imports().iter().filter(|i| i.module == HOST_MODULE).map(|i| i.name).collect();
    assert_eq!(names.len(), 22);
    let mut unique = names.clone();
    unique.dedup();
    assert_eq!(unique.len(), names.len());
}

#[test]
fn an_instance_that_served_a_request_is_never_snapshotted() {
    let (mut sandbox, _exchange) = started(&guest(SET_HEADER, "i32.const 0"), 100);
    assert_eq!(sandbox.call(Hook::RequestHeaders, None, false, true), Status::Done(0));
    sandbox.unbind();
    assert_eq!(sandbox.init_image().unwrap_err(), "a snapshot of a sandbox that served a request");
}

#[test]
fn an_instance_of_the_init_image_starts_as_init_left_memory_without_running_it() {
    // init counts its runs in memory; request headers sets x-name to that count as a digit.
    let counting = guest(SET_HEADER, "i32.const 0")
        .replace(
            "i32.const 0 i32.const 0 i32.store8 i32.const 4 i32.const 31 i32.store8 i32.const 0)",
            "i32.const 1040 i32.const 1040 i32.load8_u i32.const 1 i32.add i32.store8 \
             i32.const 0 i32.const 0 i32.store8 i32.const 4 i32.const 31 i32.store8 i32.const 0)",
        )
        .replace(r#"(data (i32.const 1040) "value")"#, r#"(data (i32.const 1040) "0")"#)
        .replace("i32.const 1040 i32.const 5 call $set-header", "i32.const 1040 i32.const 1 call $set-header");
    let wasm = wat::parse_str(&counting).expect("valid WAT");
    let module = engine().compile("counting", &wasm).expect("a module of the world");
    let calls = CallPolicy { max_concurrent: 4, timeout: Duration::from_secs(1), ..CallPolicy::default() };
    let guest =
        Arc::new(Guest::new("counting".into(), module, b"{}".to_vec(), [Duration::from_secs(1); 6], 1 << 20, calls));
    let mut first = engine().maker().sandbox(guest.clone());
    assert_eq!(start(&mut first), Status::Done(31));
    let image = first.init_image().expect("a snapshot").expect("a module wizer can snapshot");
    let module = engine().compile("counting (initialized)", &image).expect("the image is a module of the world");
    guest.set_image(Image { module, phases: 31 });
    for _ in 0..2 {
        let mut sandbox = engine().maker().sandbox(guest.clone());
        assert_eq!(start(&mut sandbox), Status::Done(31), "the phases init chose");
        let exchange = exchange();
        sandbox.bind(exchange.clone(), 0);
        assert_eq!(sandbox.call(Hook::RequestHeaders, None, false, true), Status::Done(0));
        assert_eq!(exchange.lock().request_headers.get("x-name"), Some("1"), "init ran once, for the image");
    }
}
