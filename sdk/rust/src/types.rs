//! The values hooks and host calls exchange, as the WIT world defines them.

use crate::headers::Headers;
use crate::json::Json;

/// What the gateway does when a hook returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Action {
    /// Carry on: the next processor, then the upstream or the client.
    Continue = 0,
    /// Answer with the response given to [`crate::respond`] in this hook.
    Respond = 1,
    /// Wait for the calls this hook started ([`crate::calls`]), then run
    /// [`crate::Processor::on_resume`]. Pausing with no call started fails the processor.
    Pause = 2,
}

/// The hooks a processor wants to be called in, returned by [`crate::Processor::init`].
/// The gateway skips the others: a body nobody asked for never enters the sandbox.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Phases(u8);

impl Phases {
    pub const NONE: Phases = Phases(0);
    pub const REQUEST_HEADERS: Phases = Phases(1);
    pub const REQUEST_BODY: Phases = Phases(2);
    pub const RESPONSE_HEADERS: Phases = Phases(4);
    pub const RESPONSE_BODY: Phases = Phases(8);
    pub const DONE: Phases = Phases(16);
    pub const ALL: Phases = Phases(31);

    pub const fn bits(self) -> u8 {
        self.0
    }

    pub const fn contains(self, other: Phases) -> bool {
        self.0 & other.0 == other.0
    }
}

impl core::ops::BitOr for Phases {
    type Output = Phases;
    fn bitor(self, other: Phases) -> Phases {
        Phases(self.0 | other.0)
    }
}

impl core::ops::BitOrAssign for Phases {
    fn bitor_assign(&mut self, other: Phases) {
        self.0 |= other.0;
    }
}

/// Which message a header call reads or changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Message {
    Request = 0,
    Response = 1,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum LogLevel {
    Trace = 0,
    Debug = 1,
    Info = 2,
    Warn = 3,
    Error = 4,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum MetricKind {
    Counter = 0,
    Gauge = 1,
    Histogram = 2,
}

/// Facts about the request being processed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RequestInfo {
    pub method: String,
    /// The path as the client sent it, without the query.
    pub path: String,
    /// The query string without the leading `?`; empty when absent.
    pub query: String,
    pub request_id: String,
    pub route: String,
    pub tenant: String,
    pub client_address: String,
}

/// A complete local response, built and then sent with [`crate::respond`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn new(status: u16) -> Response {
        Response { status, headers: Vec::new(), body: Vec::new() }
    }

    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Response {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Response {
        self.body = body.into();
        self
    }

    /// A response written in a processor's config, as `{status, headers, body}`
    /// (`headers` and `body` optional); `key` names it in errors.
    pub fn from_config(value: &Json, key: &str) -> Result<Response, String> {
        let status = value.get("status").and_then(Json::as_f64).ok_or(format!("{key}.status: must be a number"))?;
        if !(100.0..=599.0).contains(&status) {
            return Err(format!("{key}.status: {status} is not an HTTP status"));
        }
        let mut response = Response::new(status as u16);
        if let Some(headers) = value.get("headers") {
            for (name, value) in headers.as_object().ok_or(format!("{key}.headers: must be an object"))? {
                let value = value.as_str().ok_or(format!("{key}.headers.{name}: must be a string"))?;
                response = response.header(name.as_str(), value);
            }
        }
        if let Some(body) = value.get("body") {
            response = response.body(body.as_str().ok_or(format!("{key}.body: must be a string"))?);
        }
        Ok(response)
    }
}

/// A sub-request, started with [`crate::calls::start`]:
/// `CallRequest::post(url).header("content-type", "application/json").body(json)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallRequest {
    pub method: String,
    /// Absolute http or https; its origin must be in the processor's `subrequests.allow`.
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Per attempt; 0 means the processor's `subrequests.timeout`.
    pub timeout_ms: u32,
}

impl CallRequest {
    pub fn new(method: impl Into<String>, url: impl Into<String>) -> CallRequest {
        CallRequest { method: method.into(), url: url.into(), headers: Vec::new(), body: Vec::new(), timeout_ms: 0 }
    }

    pub fn get(url: impl Into<String>) -> CallRequest {
        CallRequest::new("GET", url)
    }

    pub fn post(url: impl Into<String>) -> CallRequest {
        CallRequest::new("POST", url)
    }

    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> CallRequest {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub fn body(mut self, body: impl Into<Vec<u8>>) -> CallRequest {
        self.body = body.into();
        self
    }

    pub fn timeout_ms(mut self, timeout_ms: u32) -> CallRequest {
        self.timeout_ms = timeout_ms;
        self
    }
}

/// What a finished call answered.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CallResponse {
    pub status: u16,
    pub headers: Headers,
    pub body: Vec<u8>,
}

/// Why a call has no response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum CallError {
    /// No answer within the call's timeout (after any retries).
    Timeout = 0,
    /// No connection, or it broke before the response.
    Connect = 1,
    /// The origin is not in `subrequests.allow`: nothing was sent.
    Denied = 2,
    /// The response body passed `subrequests.max_response_bytes`.
    TooLarge = 3,
    /// Not finished: the phase's deadline passed or the request ended.
    Cancelled = 4,
}

impl CallError {
    pub(crate) fn from_code(code: u32) -> CallError {
        match code {
            0 => CallError::Timeout,
            1 => CallError::Connect,
            2 => CallError::Denied,
            3 => CallError::TooLarge,
            _ => CallError::Cancelled,
        }
    }
}

/// A counter after [`crate::state::counter_add`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    /// Its value in the current window.
    pub value: i64,
    /// Milliseconds until the window ends and the counter starts again from 0.
    pub reset_ms: u32,
    /// False when the delta was not added, because the value would have passed the limit.
    pub applied: bool,
}
