//! What a processor implements. Every hook but `init` has a default that
//! does nothing, so a processor writes only the hooks it asks for in `init`.

use crate::types::{Action, Phases};

/// A processor. A fresh value serves each request (the gateway starts a new
/// instance of the module per request), so fields hold per-request state.
///
/// Request hooks run in the route's order, response hooks in reverse order.
/// Host calls for the request and response are in [`crate::request`] and
/// [`crate::response`].
pub trait Processor {
    /// Called once, before any other hook, with the processor's `config`
    /// from the gateway file as JSON (see [`crate::json`]). Returns the
    /// phases to call, or an error naming what is wrong with the config.
    fn init(&mut self, config: &[u8]) -> Result<Phases, String>;

    fn on_request_headers(&mut self, _end_of_stream: bool) -> Action {
        Action::Continue
    }

    /// A chunk of the request body, or the whole body when the processor
    /// buffers (`body: buffer` in the gateway config). Replace it with
    /// [`crate::request::replace_body`].
    fn on_request_body(&mut self, _body: &[u8], _end_of_stream: bool) -> Action {
        Action::Continue
    }

    fn on_response_headers(&mut self, _end_of_stream: bool) -> Action {
        Action::Continue
    }

    fn on_response_body(&mut self, _body: &[u8], _end_of_stream: bool) -> Action {
        Action::Continue
    }

    /// Every call a hook started before returning [`Action::Pause`] has
    /// finished: read them with [`crate::calls::Handle::result`]. Runs in that
    /// hook's phase, under its deadline; return `Pause` again after starting
    /// more calls.
    fn on_resume(&mut self) -> Action {
        Action::Continue
    }

    /// The exchange is over, also after a failure or a local response.
    fn on_done(&mut self) {}
}
