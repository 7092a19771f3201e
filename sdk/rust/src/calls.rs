//! Sub-requests: call other services from a hook and act on their answers.
//!
//! A hook starts its calls and returns [`Action::Pause`]; the gateway sends
//! them all at once (with an `Idempotency-Key` and retries as the processor's
//! `subrequests` config says) and, when every one has finished, calls
//! [`crate::Processor::on_resume`] in the same phase, where each
//! [`Handle::result`] is ready. No thread waits meanwhile.
//!
//! ```ignore
//! fn on_request_body(&mut self, body: &[u8], _end_of_stream: bool) -> Action {
//!     let check = CallRequest::post(&self.classifier).header("content-type", "application/json").body(body);
//!     match calls::start(&check) {
//!         Ok(handle) => {
//!             self.pending = Some(handle);
//!             Action::Pause
//!         }
//!         Err(reason) => respond(Response::new(503).body(reason)),
//!     }
//! }
//!
//! fn on_resume(&mut self) -> Action {
//!     match self.pending.take().map(Handle::result) {
//!         Some(Ok(answer)) if answer.status == 200 => Action::Continue,
//!         _ => respond(Response::new(403)),
//!     }
//! }
//! ```

use crate::hostcalls;
pub use crate::types::{Action, CallError, CallRequest, CallResponse};

/// A call started by [`start`]; its result is ready in `on_resume`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Handle(u32);

/// Starts a call; return [`Action::Pause`] from the hook to wait for it.
/// Err when the request is malformed or `subrequests.max_concurrent` calls
/// are already waiting. A call to an origin not allowed still gets a handle:
/// its result is [`CallError::Denied`], and nothing is sent.
pub fn start(request: &CallRequest) -> Result<Handle, String> {
    hostcalls::call(request).map(Handle)
}

impl Handle {
    /// The call's outcome, from `on_resume` on. Each read copies it anew.
    pub fn result(self) -> Result<CallResponse, CallError> {
        hostcalls::call_result(self.0)
    }
}
