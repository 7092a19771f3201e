//! The request being processed: its facts, headers, upstream and body.

use crate::hostcalls;
use crate::types::{Message, RequestInfo};
use crate::Headers;

pub use crate::hostcalls::replace_body;

/// Records a small checkpoint (at most 64 KiB) of this processor's progress in
/// this request. If the phase fails and the gateway tries it again
/// (`phase_retries`), the fresh instance reads it with [`checkpoint`] and can
/// go on from there.
pub use crate::hostcalls::set_checkpoint;

/// The last checkpoint this processor recorded in this request, in `init` or any hook.
pub use crate::hostcalls::checkpoint;

pub fn info() -> RequestInfo {
    hostcalls::request_info()
}

pub fn header(name: &str) -> Option<String> {
    hostcalls::header(Message::Request, name)
}

pub fn headers() -> Headers {
    hostcalls::headers(Message::Request)
}

/// Replaces every value of `name`. Allowed until the request is sent upstream.
pub fn set_header(name: &str, value: &str) {
    hostcalls::set_header(Message::Request, name, value)
}

pub fn add_header(name: &str, value: &str) {
    hostcalls::add_header(Message::Request, name, value)
}

pub fn remove_header(name: &str) {
    hostcalls::remove_header(Message::Request, name)
}

/// Sends the request to `url` (absolute http or https) instead of the route's
/// upstream. Allowed in request hooks before the upstream request started.
pub fn set_upstream(url: &str) -> Result<(), String> {
    hostcalls::set_upstream(url)
}
