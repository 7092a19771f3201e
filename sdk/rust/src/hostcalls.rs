//! The `host` interface of the WIT world: the raw imports, each wrapped once
//! in a safe function that lowers its arguments and lifts its results the
//! way the canonical ABI says.

use crate::headers::Headers;
use crate::types::{
    CallError, CallRequest, CallResponse, Counter, LogLevel, Message, MetricKind, RequestInfo, Response,
};

mod raw {
    #[link(wasm_import_module = "wasmgate:processor/host@0.1.0")]
    extern "C" {
        #[link_name = "get-request-info"]
        pub fn get_request_info(ret: *mut u32);
        #[link_name = "get-header"]
        pub fn get_header(message: i32, name: *const u8, name_len: usize, ret: *mut u32);
        #[link_name = "get-headers"]
        pub fn get_headers(message: i32, ret: *mut u32);
        #[link_name = "set-header"]
        pub fn set_header(message: i32, name: *const u8, name_len: usize, value: *const u8, value_len: usize);
        #[link_name = "add-header"]
        pub fn add_header(message: i32, name: *const u8, name_len: usize, value: *const u8, value_len: usize);
        #[link_name = "remove-header"]
        pub fn remove_header(message: i32, name: *const u8, name_len: usize);
        #[link_name = "get-status"]
        pub fn get_status() -> i32;
        #[link_name = "set-status"]
        pub fn set_status(status: i32);
        #[link_name = "replace-body"]
        pub fn replace_body(body: *const u8, len: usize);
        #[link_name = "send-response"]
        pub fn send_response(status: i32, headers: *const [u32; 4], count: usize, body: *const u8, len: usize);
        #[link_name = "set-upstream"]
        pub fn set_upstream(url: *const u8, len: usize, ret: *mut u32);
        #[link_name = "call"]
        pub fn call(
            method: *const u8,
            method_len: usize,
            url: *const u8,
            url_len: usize,
            headers: *const [u32; 4],
            headers_len: usize,
            body: *const u8,
            body_len: usize,
            timeout_ms: i32,
            ret: *mut u32,
        );
        #[link_name = "call-result"]
        pub fn call_result(handle: i32, ret: *mut u32);
        #[link_name = "set-checkpoint"]
        pub fn set_checkpoint(data: *const u8, len: usize);
        #[link_name = "get-checkpoint"]
        pub fn get_checkpoint(ret: *mut u32);
        #[link_name = "counter-add"]
        pub fn counter_add(
            key: *const u8,
            key_len: usize,
            delta: i64,
            window_ms: i32,
            has_limit: i32,
            limit: i64,
            ret: *mut u64,
        );
        #[link_name = "kv-get"]
        pub fn kv_get(key: *const u8, key_len: usize, ret: *mut u32);
        #[link_name = "kv-set"]
        pub fn kv_set(key: *const u8, key_len: usize, value: *const u8, value_len: usize, ttl_ms: i32);
        #[link_name = "kv-delete"]
        pub fn kv_delete(key: *const u8, key_len: usize);
        #[link_name = "log"]
        pub fn log(level: i32, message: *const u8, len: usize);
        #[link_name = "define-metric"]
        pub fn define_metric(
            kind: i32,
            name: *const u8,
            name_len: usize,
            help: *const u8,
            help_len: usize,
            labels: *const [u32; 2],
            labels_len: usize,
            buckets: *const f64,
            buckets_len: usize,
            ret: *mut u32,
        );
        #[link_name = "record-metric"]
        pub fn record_metric(metric: i32, labels: *const [u32; 2], labels_len: usize, value: f64);
    }
}

/// Takes ownership of bytes the host allocated in this instance through `cabi_realloc`.
unsafe fn take_bytes(ptr: u32, len: u32) -> Vec<u8> {
    if len == 0 {
        return Vec::new();
    }
    Vec::from_raw_parts(ptr as *mut u8, len as usize, len as usize)
}

/// Same, for a string (the host only ever sends UTF-8).
unsafe fn take_string(ptr: u32, len: u32) -> String {
    String::from_utf8_unchecked(take_bytes(ptr, len))
}

/// `result<_, string>` or `result<u32, string>` from a return area.
unsafe fn take_result(ret: &[u32; 3]) -> Result<u32, String> {
    if ret[0] & 0xff == 0 {
        Ok(ret[1])
    } else {
        Err(take_string(ret[1], ret[2]))
    }
}

fn string_list(values: &[&str]) -> Vec<[u32; 2]> {
    values.iter().map(|v| [v.as_ptr() as u32, v.len() as u32]).collect()
}

pub fn request_info() -> RequestInfo {
    let mut ret = [0u32; 14];
    unsafe {
        raw::get_request_info(ret.as_mut_ptr());
        let field = |i: usize| take_string(ret[2 * i], ret[2 * i + 1]);
        RequestInfo {
            method: field(0),
            path: field(1),
            query: field(2),
            request_id: field(3),
            route: field(4),
            tenant: field(5),
            client_address: field(6),
        }
    }
}

pub fn header(message: Message, name: &str) -> Option<String> {
    let mut ret = [0u32; 3];
    unsafe {
        raw::get_header(message as i32, name.as_ptr(), name.len(), ret.as_mut_ptr());
        (ret[0] & 0xff == 1).then(|| take_string(ret[1], ret[2]))
    }
}

pub fn headers(message: Message) -> Headers {
    let mut ret = [0u32; 2];
    let encoded = unsafe {
        raw::get_headers(message as i32, ret.as_mut_ptr());
        take_bytes(ret[0], ret[1])
    };
    // The host's encoding is fixed by the WIT; anything else is a host bug.
    Headers::from_msgpack(&encoded).unwrap_or_default()
}

pub fn set_header(message: Message, name: &str, value: &str) {
    unsafe { raw::set_header(message as i32, name.as_ptr(), name.len(), value.as_ptr(), value.len()) }
}

pub fn add_header(message: Message, name: &str, value: &str) {
    unsafe { raw::add_header(message as i32, name.as_ptr(), name.len(), value.as_ptr(), value.len()) }
}

pub fn remove_header(message: Message, name: &str) {
    unsafe { raw::remove_header(message as i32, name.as_ptr(), name.len()) }
}

pub fn status() -> u16 {
    unsafe { raw::get_status() as u16 }
}

pub fn set_status(status: u16) {
    unsafe { raw::set_status(status as i32) }
}

/// Replaces the body the running hook was given: the current chunk, or the
/// whole body when the processor buffers.
pub fn replace_body(body: &[u8]) {
    unsafe { raw::replace_body(body.as_ptr(), body.len()) }
}

/// A lowered `list<tuple<string, string>>`, borrowing from `headers`.
fn header_list(headers: &[(String, String)]) -> Vec<[u32; 4]> {
    headers.iter().map(|(n, v)| [n.as_ptr() as u32, n.len() as u32, v.as_ptr() as u32, v.len() as u32]).collect()
}

pub fn send_response(response: &Response) {
    let headers = header_list(&response.headers);
    let body = &response.body;
    unsafe { raw::send_response(response.status as i32, headers.as_ptr(), headers.len(), body.as_ptr(), body.len()) }
}

pub fn set_upstream(url: &str) -> Result<(), String> {
    let mut ret = [0u32; 3];
    unsafe {
        raw::set_upstream(url.as_ptr(), url.len(), ret.as_mut_ptr());
        take_result(&ret).map(|_| ())
    }
}

pub fn call(request: &CallRequest) -> Result<u32, String> {
    let headers = header_list(&request.headers);
    let (method, url, body) = (&request.method, &request.url, &request.body);
    let mut ret = [0u32; 3];
    unsafe {
        raw::call(
            method.as_ptr(),
            method.len(),
            url.as_ptr(),
            url.len(),
            headers.as_ptr(),
            headers.len(),
            body.as_ptr(),
            body.len(),
            request.timeout_ms as i32,
            ret.as_mut_ptr(),
        );
        take_result(&ret)
    }
}

pub fn call_result(handle: u32) -> Result<CallResponse, CallError> {
    // result<call-response, call-error>: tag; then status, headers and body at 4, 8 and 16.
    let mut ret = [0u32; 6];
    unsafe {
        raw::call_result(handle as i32, ret.as_mut_ptr());
        if ret[0] & 0xff != 0 {
            return Err(CallError::from_code(ret[1] & 0xff));
        }
        let headers = take_bytes(ret[2], ret[3]);
        Ok(CallResponse {
            status: (ret[1] & 0xffff) as u16,
            headers: Headers::from_msgpack(&headers).unwrap_or_default(),
            body: take_bytes(ret[4], ret[5]),
        })
    }
}

pub fn set_checkpoint(data: &[u8]) {
    unsafe { raw::set_checkpoint(data.as_ptr(), data.len()) }
}

pub fn checkpoint() -> Option<Vec<u8>> {
    let mut ret = [0u32; 3];
    unsafe {
        raw::get_checkpoint(ret.as_mut_ptr());
        (ret[0] & 0xff == 1).then(|| take_bytes(ret[1], ret[2]))
    }
}

pub fn counter_add(key: &str, delta: i64, window_ms: u32, limit: Option<i64>) -> Counter {
    // record counter { value: s64, reset-ms: u32, applied: bool }: 16 bytes, 8-aligned.
    let mut ret = [0u64; 2];
    unsafe {
        raw::counter_add(
            key.as_ptr(),
            key.len(),
            delta,
            window_ms as i32,
            limit.is_some() as i32,
            limit.unwrap_or(0),
            ret.as_mut_ptr(),
        )
    };
    Counter { value: ret[0] as i64, reset_ms: ret[1] as u32, applied: (ret[1] >> 32) & 0xff != 0 }
}

pub fn kv_get(key: &str) -> Option<Vec<u8>> {
    let mut ret = [0u32; 3];
    unsafe {
        raw::kv_get(key.as_ptr(), key.len(), ret.as_mut_ptr());
        (ret[0] & 0xff == 1).then(|| take_bytes(ret[1], ret[2]))
    }
}

pub fn kv_set(key: &str, value: &[u8], ttl_ms: u32) {
    unsafe { raw::kv_set(key.as_ptr(), key.len(), value.as_ptr(), value.len(), ttl_ms as i32) }
}

pub fn kv_delete(key: &str) {
    unsafe { raw::kv_delete(key.as_ptr(), key.len()) }
}

pub fn log(level: LogLevel, message: &str) {
    unsafe { raw::log(level as i32, message.as_ptr(), message.len()) }
}

pub fn define_metric(
    kind: MetricKind,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: &[f64],
) -> Result<u32, String> {
    let labels = string_list(labels);
    let mut ret = [0u32; 3];
    unsafe {
        raw::define_metric(
            kind as i32,
            name.as_ptr(),
            name.len(),
            help.as_ptr(),
            help.len(),
            labels.as_ptr(),
            labels.len(),
            buckets.as_ptr(),
            buckets.len(),
            ret.as_mut_ptr(),
        );
        take_result(&ret)
    }
}

pub fn record_metric(metric: u32, label_values: &[&str], value: f64) {
    let labels = string_list(label_values);
    unsafe { raw::record_metric(metric as i32, labels.as_ptr(), labels.len(), value) }
}
