//! The response being processed: its status, headers and body.

use crate::hostcalls;
use crate::types::Message;
use crate::Headers;

pub use crate::hostcalls::replace_body;

/// The response status; 0 while there is no response yet.
pub fn status() -> u16 {
    hostcalls::status()
}

pub fn set_status(status: u16) {
    hostcalls::set_status(status)
}

pub fn header(name: &str) -> Option<String> {
    hostcalls::header(Message::Response, name)
}

pub fn headers() -> Headers {
    hostcalls::headers(Message::Response)
}

/// Replaces every value of `name`. Allowed in response hooks until the
/// client has the response headers.
pub fn set_header(name: &str, value: &str) {
    hostcalls::set_header(Message::Response, name, value)
}

pub fn add_header(name: &str, value: &str) {
    hostcalls::add_header(Message::Response, name, value)
}

pub fn remove_header(name: &str) {
    hostcalls::remove_header(Message::Response, name)
}
