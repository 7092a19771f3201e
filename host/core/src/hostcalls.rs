//! The `host` interface of the WIT world: what a processor may call.
//!
//! Each call checks where it is made (a hook that has a request, a message
//! that can still change), reads its arguments from guest memory with
//! bounds and UTF-8 checked, and bounds what it copies before copying it:
//! either by a fixed limit (header maps, checkpoints, state keys and values,
//! log lines, metric labels) or against the guest's quota (bodies, local
//! responses, sub-requests). Work a guest can size (lists it passes) is
//! linear in what it passes and checked before any of it is copied.

use std::time::Instant;

use wasmtime::Caller;

use crate::abi::{HOST_MODULE, Hook};
use crate::calls::{CallRequest, CallResult};
use crate::events::{MAX_LOG_BYTES, MAX_PENDING_RECORDS, Record};
use crate::exchange::{Exchange, ExchangeData};
use crate::failure::{Cause, Failure};
use crate::headers::{HeaderMap, check_header, encode_pairs};
use crate::instance::{InstanceState, LocalResponse};
use crate::linking::{Imports, define};
use crate::memory::{bytes, check_area, le_u32, lower, lower_text, pairs, text, write_area, write_u32s};
use crate::metrics::{self, Lookup, MAX_HELP_CHARS, MAX_LABEL_VALUE_BYTES, MetricKind};
use crate::requests::{HostAnswer, HostRequest};

/// Bounds each header map a guest grows, and a local response's headers.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;
pub const MAX_CHECKPOINT_BYTES: u32 = 64 * 1024;
pub const MAX_STATE_KEY_BYTES: u32 = 1024;
pub const MAX_STATE_VALUE_BYTES: u32 = 64 * 1024;
pub const MAX_UPSTREAM_BYTES: u32 = 8 * 1024;

type Ctx<'a, 'b> = &'a mut Caller<'b, InstanceState>;
type Done<T = ()> = Result<T, Failure>;

pub fn define(imports: &mut Imports) -> wasmtime::Result<()> {
    define!(imports, HOST_MODULE, "get-request-info", async get_request_info(retptr: u32));
    define!(imports, HOST_MODULE, "get-header", async get_header(message: u32, np: u32, nl: u32, retptr: u32));
    define!(imports, HOST_MODULE, "get-headers", async get_headers(message: u32, retptr: u32));
    define!(imports, HOST_MODULE, "set-header", sync set_header(message: u32, np: u32, nl: u32, vp: u32, vl: u32));
    define!(imports, HOST_MODULE, "add-header", sync add_header(message: u32, np: u32, nl: u32, vp: u32, vl: u32));
    define!(imports, HOST_MODULE, "remove-header", sync remove_header(message: u32, np: u32, nl: u32));
    define!(imports, HOST_MODULE, "get-status", sync get_status() -> u32);
    define!(imports, HOST_MODULE, "set-status", sync set_status(status: u32));
    define!(imports, HOST_MODULE, "replace-body", sync replace_body(ptr: u32, len: u32));
    define!(imports, HOST_MODULE, "send-response", sync send_response(status: u32, hp: u32, hn: u32, bp: u32, bl: u32));
    define!(imports, HOST_MODULE, "set-upstream", async set_upstream(ptr: u32, len: u32, retptr: u32));
    define!(imports, HOST_MODULE, "log", sync log(level: u32, ptr: u32, len: u32));
    define!(
        imports,
        HOST_MODULE,
        "call",
        async call(mp: u32, ml: u32, up: u32, ul: u32, hp: u32, hn: u32, bp: u32, bl: u32, timeout_ms: u32, retptr: u32)
    );
    define!(imports, HOST_MODULE, "call-result", async call_result(handle: u32, retptr: u32));
    define!(imports, HOST_MODULE, "set-checkpoint", sync set_checkpoint(ptr: u32, len: u32));
    define!(imports, HOST_MODULE, "get-checkpoint", async get_checkpoint(retptr: u32));
    define!(
        imports,
        HOST_MODULE,
        "counter-add",
        async counter_add(kp: u32, kl: u32, delta: i64, window_ms: u32, has_limit: u32, limit: i64, retptr: u32)
    );
    define!(imports, HOST_MODULE, "kv-get", async kv_get(kp: u32, kl: u32, retptr: u32));
    define!(imports, HOST_MODULE, "kv-set", async kv_set(kp: u32, kl: u32, vp: u32, vl: u32, ttl_ms: u32));
    define!(imports, HOST_MODULE, "kv-delete", async kv_delete(kp: u32, kl: u32));
    define!(
        imports,
        HOST_MODULE,
        "define-metric",
        async define_metric(kind: u32, np: u32, nl: u32, hp: u32, hl: u32, lp: u32, lc: u32, bp: u32, bc: u32, retptr: u32)
    );
    define!(imports, HOST_MODULE, "record-metric", async record_metric(metric: u32, lp: u32, lc: u32, value: f64));
    Ok(())
}

// -- guest memory ---------------------------------------------------------------

fn memory<'a>(caller: &'a Caller<'_, InstanceState>) -> &'a [u8] {
    caller.data().exports().memory.data(caller)
}

fn memory_mut<'a>(caller: &'a mut Caller<'_, InstanceState>) -> &'a mut [u8] {
    caller.data().exports().memory.data_mut(caller)
}

fn memory_size(caller: &Caller<'_, InstanceState>) -> usize {
    caller.data().exports().memory.data_size(caller)
}

/// Fails with `memory_limit` unless the host may hold `more` bytes for the guest.
fn reserve(caller: &Caller<'_, InstanceState>, more: usize, what: &str) -> Done {
    caller.data().quota.check(memory_size(caller), more, what)
}

/// A lowered `list<tuple<string, string>>`: checked and copied only once its size is known to fit `limit`.
fn header_list(caller: Ctx, ptr: u32, count: u32, call: &str, limit: usize) -> Done<Vec<(String, String)>> {
    let memory = memory(caller);
    let raw = bytes(memory, ptr, count as usize * 16, &format!("{call}'s headers"))?;
    // A field is four u32s: name ptr, name len, value ptr, value len.
    let field = |f: &[u8], i: usize| le_u32(&f[i * 4..i * 4 + 4]);
    let size: usize = raw.chunks_exact(16).map(|f| field(f, 1) as usize + field(f, 3) as usize).sum();
    if size > limit {
        return Err(Failure::memory(format!("{call}: headers pass {limit} bytes")));
    }
    raw.chunks_exact(16)
        .map(|f| {
            let name = text(memory, field(f, 0), field(f, 1), &format!("{call}'s name"))?;
            let value = text(memory, field(f, 2), field(f, 3), &format!("{call}'s value"))?;
            check_header(name, value)?;
            Ok((name.to_owned(), value.to_owned()))
        })
        .collect()
}

// -- where a call is allowed ------------------------------------------------------

/// The request the running hook serves, and the processor's place on its route.
fn request(caller: &Caller<'_, InstanceState>, call: &str) -> Done<(Exchange, usize)> {
    let state = caller.data();
    match (&state.binding, state.phase) {
        (Some(binding), Some(hook)) if hook != Hook::Init => Ok((binding.exchange.clone(), binding.index)),
        _ => Err(Failure::abi(format!("{call} called during init: there is no request yet"))),
    }
}

fn phase(caller: &Caller<'_, InstanceState>) -> &'static str {
    caller.data().phase.map_or("init", Hook::phase)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Message {
    Request,
    Response,
}

fn message(raw: u32, call: &str) -> Done<Message> {
    match raw {
        0 => Ok(Message::Request),
        1 => Ok(Message::Response),
        _ => Err(Failure::abi(format!("{call}: {raw} is not a valid Message"))),
    }
}

fn readable(data: &ExchangeData, which: Message) -> Option<&HeaderMap> {
    match which {
        Message::Request => Some(&data.request_headers),
        Message::Response => data.response_headers.as_ref(),
    }
}

fn writable<'a>(data: &'a mut ExchangeData, which: Message, hook: &str, call: &str) -> Done<&'a mut HeaderMap> {
    match which {
        Message::Request if data.request_sent => {
            Err(Failure::abi(format!("{call}: the request headers were already sent upstream")))
        }
        Message::Request => Ok(&mut data.request_headers),
        Message::Response if data.response_sent => {
            Err(Failure::abi(format!("{call}: the response headers were already sent to the client")))
        }
        Message::Response => data
            .response_headers
            .as_mut()
            .filter(|_| matches!(hook, "response_headers" | "response_body"))
            .ok_or_else(|| Failure::abi(format!("{call}: there is no response in {hook}"))),
    }
}

// -- request facts and headers ------------------------------------------------------

async fn get_request_info(caller: Ctx<'_, '_>, retptr: u32) -> Done {
    let (exchange, _) = request(caller, "get-request-info")?;
    let facts = exchange.lock().facts.clone();
    let mut flat = Vec::with_capacity(14);
    for value in [
        &facts.method,
        &facts.path,
        &facts.query,
        &facts.request_id,
        &facts.route,
        &facts.tenant,
        &facts.client_address,
    ] {
        flat.extend(lower_text(caller, value, "get-request-info").await?);
    }
    write_u32s(memory_mut(caller), retptr, &flat, "get-request-info's return area")
}

async fn get_header(caller: Ctx<'_, '_>, which: u32, np: u32, nl: u32, retptr: u32) -> Done {
    let (exchange, _) = request(caller, "get-header")?;
    let which = message(which, "get-header")?;
    let name = text(memory(caller), np, nl, "get-header's name")?;
    let value = readable(&exchange.lock(), which).and_then(|headers| headers.get(name)).map(str::to_owned);
    let area = match value {
        None => vec![0],
        Some(value) => {
            let [ptr, len] = lower_text(caller, &value, "get-header").await?;
            vec![1, ptr, len]
        }
    };
    write_u32s(memory_mut(caller), retptr, &area, "get-header's return area")
}

async fn get_headers(caller: Ctx<'_, '_>, which: u32, retptr: u32) -> Done {
    let (exchange, _) = request(caller, "get-headers")?;
    let which = message(which, "get-headers")?;
    let encoded = readable(&exchange.lock(), which).map_or_else(|| encode_pairs(std::iter::empty()), HeaderMap::encode);
    let ptr = lower(caller, &encoded, 1, "get-headers").await?;
    write_u32s(memory_mut(caller), retptr, &[ptr, encoded.len() as u32], "get-headers' return area")
}

fn change_header(caller: Ctx, call: &str, which: u32, name: (u32, u32), value: (u32, u32), add: bool) -> Done {
    let (exchange, _) = request(caller, call)?;
    let which = message(which, call)?;
    let hook = phase(caller);
    let mut data = exchange.lock();
    let headers = writable(&mut data, which, hook, call)?;
    let memory = memory(caller);
    let name = text(memory, name.0, name.1, &format!("{call}'s name"))?;
    let value = text(memory, value.0, value.1, &format!("{call}'s value"))?;
    check_header(name, value)?;
    let after = if add { headers.bytes() + name.len() + value.len() } else { headers.bytes_after_set(name, value) };
    if after > MAX_HEADER_BYTES {
        return Err(Failure::memory(format!("{call}: headers would pass {MAX_HEADER_BYTES} bytes")));
    }
    if add {
        headers.add(name.to_owned(), value.to_owned());
    } else {
        headers.set(name.to_owned(), value.to_owned());
    }
    Ok(())
}

fn set_header(caller: Ctx, which: u32, np: u32, nl: u32, vp: u32, vl: u32) -> Done {
    change_header(caller, "set-header", which, (np, nl), (vp, vl), false)
}

fn add_header(caller: Ctx, which: u32, np: u32, nl: u32, vp: u32, vl: u32) -> Done {
    change_header(caller, "add-header", which, (np, nl), (vp, vl), true)
}

fn remove_header(caller: Ctx, which: u32, np: u32, nl: u32) -> Done {
    let (exchange, _) = request(caller, "remove-header")?;
    let which = message(which, "remove-header")?;
    let hook = phase(caller);
    let mut data = exchange.lock();
    let headers = writable(&mut data, which, hook, "remove-header")?;
    headers.remove(text(memory(caller), np, nl, "remove-header's name")?);
    Ok(())
}

// -- status, body, local responses, upstream ----------------------------------------

fn get_status(caller: Ctx) -> Done<u32> {
    let (exchange, _) = request(caller, "get-status")?;
    Ok(u32::from(exchange.lock().response_status))
}

fn http_status(status: u32, call: &str) -> Done<u16> {
    match status {
        100..=599 => Ok(status as u16),
        _ => Err(Failure::abi(format!("{call}: {status} is not an HTTP status"))),
    }
}

fn set_status(caller: Ctx, status: u32) -> Done {
    let (exchange, _) = request(caller, "set-status")?;
    let hook = phase(caller);
    let mut data = exchange.lock();
    writable(&mut data, Message::Response, hook, "set-status")?;
    data.response_status = http_status(status, "set-status")?;
    Ok(())
}

fn replace_body(caller: Ctx, ptr: u32, len: u32) -> Done {
    if !caller.data().phase.is_some_and(Hook::takes_body) {
        return Err(Failure::abi(format!("replace-body called in {}, which has no body", phase(caller))));
    }
    caller.data_mut().quota.body = 0; // the body it replaces is freed first
    reserve(caller, len as usize, "replace-body")?;
    let body = bytes(memory(caller), ptr, len as usize, "replace-body's body")?.to_vec();
    let state = caller.data_mut();
    state.quota.body = body.len();
    state.replaced_body = Some(body);
    Ok(())
}

fn send_response(caller: Ctx, status: u32, hp: u32, hn: u32, bp: u32, bl: u32) -> Done {
    let (exchange, _) = request(caller, "send-response")?;
    let hook = caller.data().phase.unwrap_or(Hook::Init);
    if hook == Hook::Done || (hook.is_response() && exchange.lock().response_sent) {
        return Err(Failure::abi(format!("send-response called in {}, after the response started", hook.phase())));
    }
    let status = http_status(status, "send-response")?;
    let headers = header_list(caller, hp, hn, "send-response", MAX_HEADER_BYTES)?;
    let headers_size: usize = headers.iter().map(|(n, v)| n.len() + v.len()).sum();
    caller.data_mut().quota.response = 0; // a response set before in this hook is replaced
    reserve(caller, headers_size + bl as usize, "send-response")?;
    let body = bytes(memory(caller), bp, bl as usize, "send-response's body")?.to_vec();
    let state = caller.data_mut();
    state.quota.response = headers_size + body.len();
    state.local_response = Some(LocalResponse { status, headers, body });
    Ok(())
}

async fn set_upstream(caller: Ctx<'_, '_>, ptr: u32, len: u32, retptr: u32) -> Done {
    let (exchange, _) = request(caller, "set-upstream")?;
    let hook = caller.data().phase.unwrap_or(Hook::Init);
    if exchange.lock().request_sent || !hook.is_request() {
        return Err(Failure::abi(format!(
            "set-upstream called in {}, after the upstream request started",
            hook.phase()
        )));
    }
    let outcome = if len > MAX_UPSTREAM_BYTES {
        Err(format!("an upstream URL of {len} bytes is longer than {MAX_UPSTREAM_BYTES}"))
    } else {
        let url = text(memory(caller), ptr, len, "set-upstream's url")?;
        caller.data().guest.calls.upstream(url).map(|_| url.to_owned())
    };
    let area = match outcome {
        Ok(url) => {
            exchange.lock().upstream = url;
            vec![0]
        }
        Err(problem) => {
            let [ptr, len] = lower_text(caller, &problem, "set-upstream").await?;
            vec![1, ptr, len]
        }
    };
    write_u32s(memory_mut(caller), retptr, &area, "set-upstream's return area")
}

// -- logs ------------------------------------------------------------------------------

fn log(caller: Ctx, level: u32, ptr: u32, len: u32) -> Done {
    if level > 4 {
        return Err(Failure::abi(format!("log: {level} is not a valid LogLevel")));
    }
    let kept = (len as usize).min(MAX_LOG_BYTES);
    let room = caller.data().quota.room(memory_size(caller));
    let line = &bytes(memory(caller), ptr, len as usize, "log's message")?[..kept];
    let mut mailbox = caller.data().shared.lock();
    mailbox.events.set_room(room);
    mailbox.events.log(level as u8, line, len as usize);
    Ok(())
}

// -- sub-requests -------------------------------------------------------------------------

#[allow(clippy::too_many_arguments)] // the flat lowering of `call-request`
async fn call(
    caller: Ctx<'_, '_>,
    mp: u32,
    ml: u32,
    up: u32,
    ul: u32,
    hp: u32,
    hn: u32,
    bp: u32,
    bl: u32,
    timeout_ms: u32,
    retptr: u32,
) -> Done {
    let (exchange, index) = request(caller, "call")?;
    if caller.data().phase == Some(Hook::Done) {
        return Err(Failure::abi("call in done: nothing is left to wait for it"));
    }
    let headers = header_list(caller, hp, hn, "call", MAX_HEADER_BYTES)?;
    let size = ml as usize + ul as usize + bl as usize + headers.iter().map(|(n, v)| n.len() + v.len()).sum::<usize>();
    reserve(caller, size, "call")?;
    let memory = memory(caller);
    let request = CallRequest {
        method: text(memory, mp, ml, "call's method")?,
        url: text(memory, up, ul, "call's url")?,
        headers,
        body: bytes(memory, bp, bl as usize, "call's body")?,
        timeout_ms,
    };
    let started = {
        let mut data = exchange.lock();
        let ledger = &mut data.scopes[index].calls;
        let started = ledger.start(&caller.data().guest.calls, request);
        let held = ledger.held_bytes();
        drop(data);
        caller.data_mut().quota.calls = held;
        started
    };
    let area = match started {
        Ok(handle) => vec![0, handle],
        Err(problem) => {
            let [ptr, len] = lower_text(caller, &problem, "call").await?;
            vec![1, ptr, len]
        }
    };
    write_u32s(memory_mut(caller), retptr, &area, "call's result")
}

async fn call_result(caller: Ctx<'_, '_>, handle: u32, retptr: u32) -> Done {
    let (exchange, index) = request(caller, "call-result")?;
    let unknown = || Failure::abi(format!("call-result: no finished call has handle {handle}"));
    let result = exchange.lock().scopes[index].calls.finished(handle).cloned().ok_or_else(unknown)?;
    let area = match result {
        CallResult::Response(response) => {
            let headers = encode_pairs(response.headers.iter().map(|(n, v)| (n.as_str(), v.as_str())));
            let hp = lower(caller, &headers, 1, "call-result's headers").await?;
            let bp = lower(caller, &response.body, 1, "call-result's body").await?;
            // result<call-response, call-error>: tag, then status (u16) and two lists at offsets 4, 8 and 16
            let mut area = [0u8; 24];
            area[4..6].copy_from_slice(&response.status.to_le_bytes());
            for (i, value) in [hp, headers.len() as u32, bp, response.body.len() as u32].into_iter().enumerate() {
                area[8 + i * 4..12 + i * 4].copy_from_slice(&value.to_le_bytes());
            }
            area.to_vec()
        }
        CallResult::Error(error) => vec![1, 0, 0, 0, error as u8, 0, 0, 0],
    };
    write_area(memory_mut(caller), retptr, &area, 4, "call-result's result")
}

// -- checkpoints -------------------------------------------------------------------------------

fn set_checkpoint(caller: Ctx, ptr: u32, len: u32) -> Done {
    if len > MAX_CHECKPOINT_BYTES {
        return Err(Failure::memory(format!("set-checkpoint: {len} bytes, more than {MAX_CHECKPOINT_BYTES}")));
    }
    let data = bytes(memory(caller), ptr, len as usize, "set-checkpoint's data")?.to_vec();
    if let Some(binding) = &caller.data().binding {
        binding.exchange.lock().scopes[binding.index].checkpoint = Some(data);
    }
    Ok(())
}

async fn get_checkpoint(caller: Ctx<'_, '_>, retptr: u32) -> Done {
    let checkpoint = caller
        .data()
        .binding
        .as_ref()
        .and_then(|binding| binding.exchange.lock().scopes[binding.index].checkpoint.clone());
    let area = match checkpoint {
        None => vec![0],
        Some(data) => vec![1, lower(caller, &data, 1, "get-checkpoint").await?, data.len() as u32],
    };
    write_u32s(memory_mut(caller), retptr, &area, "get-checkpoint's return area")
}

// -- shared state ----------------------------------------------------------------------------------

/// The key in the processor's own namespace, and what is left of the phase for the call.
fn state_key(caller: Ctx, call: &str, kp: u32, kl: u32) -> Done<(Vec<u8>, std::time::Duration)> {
    let (exchange, _) = request(caller, call)?;
    if kl > MAX_STATE_KEY_BYTES {
        return Err(Failure::abi(format!("{call}: a {kl}-byte key is longer than {MAX_STATE_KEY_BYTES} bytes")));
    }
    let remaining = caller.data().deadline.saturating_duration_since(Instant::now());
    if remaining.is_zero() {
        return Err(Failure::new(Cause::Timeout, format!("{call}: the phase's deadline passed")));
    }
    // Tenant and processor names cannot hold a NUL: a guest's key cannot reach out of its namespace.
    let mut key = format!("{}\0{}\0", exchange.lock().facts.tenant, caller.data().guest.name).into_bytes();
    key.extend_from_slice(bytes(memory(caller), kp, kl as usize, &format!("{call}'s key"))?);
    Ok((key, remaining))
}

async fn ask(caller: Ctx<'_, '_>, request: HostRequest) -> Done<HostAnswer> {
    let shared = caller.data().shared.clone();
    match shared.ask(request).await {
        HostAnswer::Failed(failure) => Err(failure),
        answer => Ok(answer),
    }
}

fn unexpected(call: &str, answer: &HostAnswer) -> Failure {
    Failure::new(Cause::HostError, format!("{call}: the gateway answered {answer:?}"))
}

#[allow(clippy::too_many_arguments)] // the flat lowering of counter-add's parameters
async fn counter_add(
    caller: Ctx<'_, '_>,
    kp: u32,
    kl: u32,
    delta: i64,
    window_ms: u32,
    has_limit: u32,
    limit: i64,
    retptr: u32,
) -> Done {
    let (key, timeout) = state_key(caller, "counter-add", kp, kl)?;
    if window_ms == 0 {
        return Err(Failure::abi("counter-add: a window of 0 ms"));
    }
    // Memory only grows: a return area good now is good once the add is made, which cannot be undone.
    check_area(memory(caller), retptr, 16, 8, "counter-add's result")?;
    let limit = (has_limit & 0xff != 0).then_some(limit);
    let request = HostRequest::CounterAdd { key, delta, window_ms, limit, timeout };
    let HostAnswer::Counter { value, reset_ms, applied } = ask(caller, request).await? else {
        return Err(Failure::new(Cause::HostError, "counter-add: the gateway answered no counter"));
    };
    let mut area = [0u8; 16];
    area[..8].copy_from_slice(&value.to_le_bytes());
    area[8..12].copy_from_slice(&reset_ms.to_le_bytes());
    area[12] = u8::from(applied);
    write_area(memory_mut(caller), retptr, &area, 8, "counter-add's result")
}

async fn kv_get(caller: Ctx<'_, '_>, kp: u32, kl: u32, retptr: u32) -> Done {
    let (key, timeout) = state_key(caller, "kv-get", kp, kl)?;
    let area = match ask(caller, HostRequest::KvGet { key, timeout }).await? {
        HostAnswer::Value(None) => vec![0],
        HostAnswer::Value(Some(value)) => vec![1, lower(caller, &value, 1, "kv-get").await?, value.len() as u32],
        answer => return Err(unexpected("kv-get", &answer)),
    };
    write_u32s(memory_mut(caller), retptr, &area, "kv-get's result")
}

async fn kv_set(caller: Ctx<'_, '_>, kp: u32, kl: u32, vp: u32, vl: u32, ttl_ms: u32) -> Done {
    let (key, timeout) = state_key(caller, "kv-set", kp, kl)?;
    if vl > MAX_STATE_VALUE_BYTES {
        return Err(Failure::abi(format!("kv-set: a {vl}-byte value is larger than {MAX_STATE_VALUE_BYTES} bytes")));
    }
    let value = bytes(memory(caller), vp, vl as usize, "kv-set's value")?.to_vec();
    match ask(caller, HostRequest::KvSet { key, value, ttl_ms, timeout }).await? {
        HostAnswer::Done => Ok(()),
        answer => Err(unexpected("kv-set", &answer)),
    }
}

async fn kv_delete(caller: Ctx<'_, '_>, kp: u32, kl: u32) -> Done {
    let (key, timeout) = state_key(caller, "kv-delete", kp, kl)?;
    match ask(caller, HostRequest::KvDelete { key, timeout }).await? {
        HostAnswer::Done => Ok(()),
        answer => Err(unexpected("kv-delete", &answer)),
    }
}

// -- metrics ------------------------------------------------------------------------------------------

#[allow(clippy::too_many_arguments)] // the flat lowering of define-metric's parameters
async fn define_metric(
    caller: Ctx<'_, '_>,
    kind: u32,
    np: u32,
    nl: u32,
    hp: u32,
    hl: u32,
    lp: u32,
    lc: u32,
    bp: u32,
    bc: u32,
    retptr: u32,
) -> Done {
    let kind = MetricKind::from_code(kind)
        .ok_or_else(|| Failure::abi(format!("define-metric: {kind} is not a valid MetricKind")))?;
    let outcome = match read_definition(caller, kind, (np, nl), (hp, hl), (lp, lc), (bp, bc))? {
        Err(problem) => Err(problem),
        Ok((name, help, shape)) => {
            let lookup = caller.data().guest.metrics().lookup(&name, &shape);
            match lookup {
                Err(problem) => Err(problem),
                Ok(Lookup::Known(id)) => Ok(id),
                Ok(Lookup::New(id)) => {
                    let request = HostRequest::DefineMetric {
                        id,
                        kind,
                        name: name.clone(),
                        help,
                        labels: shape.labels.clone(),
                        buckets: shape.buckets.clone(),
                    };
                    match ask(caller, request).await? {
                        HostAnswer::Done => {
                            caller.data().guest.metrics().insert(id, name, shape);
                            Ok(id)
                        }
                        HostAnswer::Refused(problem) => Err(problem),
                        answer => return Err(unexpected("define-metric", &answer)),
                    }
                }
            }
        }
    };
    let area = match outcome {
        Ok(id) => vec![0, id],
        Err(problem) => {
            let [ptr, len] = lower_text(caller, &problem, "define-metric").await?;
            vec![1, ptr, len]
        }
    };
    write_u32s(memory_mut(caller), retptr, &area, "define-metric's result")
}

type Definition = Result<(String, String, metrics::MetricShape), String>;

/// A definition read from guest memory: ABI violations fail, a refused definition is the guest's `Err`.
fn read_definition(
    caller: Ctx,
    kind: MetricKind,
    (np, nl): (u32, u32),
    (hp, hl): (u32, u32),
    (lp, lc): (u32, u32),
    (bp, bc): (u32, u32),
) -> Done<Definition> {
    if let Err(problem) = metrics::check_counts(nl, lc, bc) {
        return Ok(Err(problem));
    }
    let memory = memory(caller);
    let name = text(memory, np, nl, "define-metric's name")?.to_owned();
    let help: String = text(memory, hp, hl, "define-metric's help")?.chars().take(MAX_HELP_CHARS).collect();
    let mut labels = Vec::with_capacity(lc as usize);
    for (ptr, len) in pairs(memory, lp, lc, "define-metric's labels")? {
        if len > 64 {
            return Ok(Err(format!("a label name of {len} bytes is longer than 64")));
        }
        labels.push(text(memory, ptr, len, "define-metric's labels")?.to_owned());
    }
    if !bp.is_multiple_of(8) {
        return Err(Failure::abi(format!("define-metric's buckets: list<f64> at {bp:#x} is not 8-byte aligned")));
    }
    let buckets = bytes(memory, bp, bc as usize * 8, "define-metric's buckets")?
        .chunks_exact(8)
        .map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")))
        .collect();
    let help = if help.is_empty() { name.clone() } else { help };
    Ok(metrics::shape(kind, &name, labels, buckets).map(|shape| (name, help, shape)))
}

async fn record_metric(caller: Ctx<'_, '_>, metric: u32, lp: u32, lc: u32, value: f64) -> Done {
    caller.data().guest.metrics().check_record(metric, lc, value)?;
    let memory = memory(caller);
    let mut labels = Vec::with_capacity(lc as usize);
    for (ptr, len) in pairs(memory, lp, lc, "record-metric's label values")? {
        if len as usize > MAX_LABEL_VALUE_BYTES {
            return Err(Failure::abi(format!(
                "record-metric: a label value of {len} bytes is longer than {MAX_LABEL_VALUE_BYTES}"
            )));
        }
        labels.push(text(memory, ptr, len, "record-metric's label values")?.to_owned());
    }
    let room = caller.data().quota.room(memory_size(caller));
    let pending = {
        let mut mailbox = caller.data().shared.lock();
        mailbox.events.set_room(room);
        if !mailbox.events.record(Record { metric, labels, value }) {
            return Err(Failure::memory("record-metric: the records waiting for the gateway are over the quota"));
        }
        mailbox.events.records.len()
    };
    if pending >= MAX_PENDING_RECORDS {
        ask(caller, HostRequest::Flush).await?;
    }
    Ok(())
}
