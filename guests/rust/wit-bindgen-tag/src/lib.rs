//! A processor written with the upstream `wit-bindgen` crate alone, from
//! `wit/`: it proves that any `wit-bindgen` guest of the world runs in
//! wasmgate unmodified. It sets `x-tag: <config.tag>` on the request and on
//! the response. Config: `{"tag": "value"}`.

use std::sync::OnceLock;

wit_bindgen::generate!({
    path: "../../../wit",
    world: "processor",
});

use exports::wasmgate::processor::handler::Guest;
use wasmgate::processor::host;
use wasmgate::processor::types::{Action, Message, Phases};

static TAG: OnceLock<String> = OnceLock::new();

/// The string value of `"tag"` in a flat JSON object (no escapes): enough
/// for this example, which must not depend on anything but wit-bindgen.
fn tag_from(config: &str) -> Option<String> {
    let after_key = &config[config.find("\"tag\"")? + 5..];
    let value = after_key.trim_start().strip_prefix(':')?.trim_start().strip_prefix('"')?;
    Some(value[..value.find('"')?].to_owned())
}

struct Tag;

impl Guest for Tag {
    fn init(config: Vec<u8>) -> Result<Phases, String> {
        let config = String::from_utf8(config).map_err(|_| "config is not UTF-8".to_owned())?;
        let tag = tag_from(&config).ok_or("config needs a string \"tag\"")?;
        TAG.get_or_init(|| tag);
        Ok(Phases::REQUEST_HEADERS | Phases::RESPONSE_HEADERS)
    }

    fn on_request_headers(_end_of_stream: bool) -> Action {
        host::set_header(Message::Request, "x-tag", TAG.get().map_or("", String::as_str));
        Action::Continue
    }

    fn on_request_body(_body: Vec<u8>, _end_of_stream: bool) -> Action {
        Action::Continue
    }

    fn on_response_headers(_end_of_stream: bool) -> Action {
        host::set_header(Message::Response, "x-tag", TAG.get().map_or("", String::as_str));
        Action::Continue
    }

    fn on_response_body(_body: Vec<u8>, _end_of_stream: bool) -> Action {
        Action::Continue
    }

    fn on_resume() -> Action {
        Action::Continue
    }

    fn on_done() {}
}

export!(Tag);
