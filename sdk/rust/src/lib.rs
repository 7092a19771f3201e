//! Write [wasmgate](https://github.com/wasmgate) processors in Rust.
//!
//! A processor implements [`Processor`] and registers it with [`register!`];
//! the crate builds to a core Wasm module implementing the
//! `wasmgate:processor@0.1.0` world (see `wit/processor.wit`).
//!
//! ```ignore
//! use wasmgate_sdk::{request, Action, Phases, Processor};
//!
//! #[derive(Default)]
//! struct Hello;
//!
//! impl Processor for Hello {
//!     fn init(&mut self, _config: &[u8]) -> Result<Phases, String> {
//!         Ok(Phases::REQUEST_HEADERS)
//!     }
//!
//!     fn on_request_headers(&mut self, _end_of_stream: bool) -> Action {
//!         request::set_header("x-hello", "world");
//!         Action::Continue
//!     }
//! }
//!
//! wasmgate_sdk::register!(Hello);
//! ```

// Built for the host only to unit-test the pure parts; their callers are wasm-only.
#![cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]

mod headers;
pub mod json;
mod traits;
mod types;

pub use headers::Headers;
pub use traits::Processor;
pub use types::{
    Action, CallError, CallRequest, CallResponse, Counter, LogLevel, Message, MetricKind, Phases, RequestInfo, Response,
};

// What needs the gateway's imports exists only in the Wasm build; the pure
// parts above also build (and are unit-tested) on the host.
#[cfg(target_arch = "wasm32")]
pub mod calls;
#[cfg(target_arch = "wasm32")]
#[doc(hidden)]
pub mod dispatcher;
#[cfg(target_arch = "wasm32")]
mod hostcalls;
#[cfg(target_arch = "wasm32")]
pub mod metrics;
#[cfg(target_arch = "wasm32")]
pub mod request;
#[cfg(target_arch = "wasm32")]
pub mod response;
#[cfg(target_arch = "wasm32")]
pub mod state;

#[cfg(target_arch = "wasm32")]
pub use hostcalls::log;

/// Sends `response` as the local response and returns [`Action::Respond`]:
/// `return respond(Response::new(403).body("no"));`
#[cfg(target_arch = "wasm32")]
pub fn respond(response: Response) -> Action {
    hostcalls::send_response(&response);
    Action::Respond
}

/// Registers the processor type: exports the world's handler functions for
/// it. A fresh `Default` value serves each request.
#[macro_export]
macro_rules! register {
    ($processor:ty) => {
        const _: () = {
            use $crate::dispatcher as d;

            #[export_name = "wasmgate:processor/handler@0.1.0#init"]
            unsafe extern "C" fn init(config: *mut u8, len: usize) -> *mut u32 {
                d::init::<$processor>(config, len)
            }
            #[export_name = "cabi_post_wasmgate:processor/handler@0.1.0#init"]
            unsafe extern "C" fn init_post_return(ret: *mut u32) {
                d::init_post_return(ret)
            }
            #[export_name = "wasmgate:processor/handler@0.1.0#on-request-headers"]
            extern "C" fn on_request_headers(end_of_stream: i32) -> i32 {
                d::on_request_headers(end_of_stream)
            }
            #[export_name = "wasmgate:processor/handler@0.1.0#on-request-body"]
            unsafe extern "C" fn on_request_body(body: *mut u8, len: usize, end_of_stream: i32) -> i32 {
                d::on_request_body(body, len, end_of_stream)
            }
            #[export_name = "wasmgate:processor/handler@0.1.0#on-response-headers"]
            extern "C" fn on_response_headers(end_of_stream: i32) -> i32 {
                d::on_response_headers(end_of_stream)
            }
            #[export_name = "wasmgate:processor/handler@0.1.0#on-response-body"]
            unsafe extern "C" fn on_response_body(body: *mut u8, len: usize, end_of_stream: i32) -> i32 {
                d::on_response_body(body, len, end_of_stream)
            }
            #[export_name = "wasmgate:processor/handler@0.1.0#on-resume"]
            extern "C" fn on_resume() -> i32 {
                d::on_resume()
            }
            #[export_name = "wasmgate:processor/handler@0.1.0#on-done"]
            extern "C" fn on_done() {
                d::on_done()
            }
        };
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __log {
    ($level:ident, $($arg:tt)*) => {
        $crate::log($crate::LogLevel::$level, &::std::format!($($arg)*))
    };
}

/// Logs to the gateway's log, under this processor's name.
#[macro_export]
macro_rules! trace { ($($arg:tt)*) => { $crate::__log!(Trace, $($arg)*) }; }
#[macro_export]
macro_rules! debug { ($($arg:tt)*) => { $crate::__log!(Debug, $($arg)*) }; }
#[macro_export]
macro_rules! info { ($($arg:tt)*) => { $crate::__log!(Info, $($arg)*) }; }
#[macro_export]
macro_rules! warn { ($($arg:tt)*) => { $crate::__log!(Warn, $($arg)*) }; }
#[macro_export]
macro_rules! error { ($($arg:tt)*) => { $crate::__log!(Error, $($arg)*) }; }
