//! The WIT world (`wit/processor.wit`) as its core-module lowering names it:
//! hooks exported as `wasmgate:processor/handler@0.1.0#<func>`, host calls
//! imported from `wasmgate:processor/host@0.1.0`, `cabi_realloc` for memory the
//! host hands in, `cabi_post_*` after results that own memory.

pub const HOST_MODULE: &str = "wasmgate:processor/host@0.1.0";
pub const HANDLER: &str = "wasmgate:processor/handler@0.1.0";
pub const WASI_MODULE: &str = "wasi_snapshot_preview1";

/// A handler export the host calls, numbered as `wasmgate.runtime.Hook` numbers them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    Init,
    RequestHeaders,
    RequestBody,
    ResponseHeaders,
    ResponseBody,
    Done,
}

impl Hook {
    pub const ALL: [Hook; 6] =
        [Hook::Init, Hook::RequestHeaders, Hook::RequestBody, Hook::ResponseHeaders, Hook::ResponseBody, Hook::Done];

    pub fn from_index(index: u8) -> Option<Hook> {
        Hook::ALL.get(usize::from(index)).copied()
    }

    pub fn index(self) -> usize {
        self as usize
    }

    pub fn wit_name(self) -> &'static str {
        match self {
            Hook::Init => "init",
            Hook::RequestHeaders => "on-request-headers",
            Hook::RequestBody => "on-request-body",
            Hook::ResponseHeaders => "on-response-headers",
            Hook::ResponseBody => "on-response-body",
            Hook::Done => "on-done",
        }
    }

    /// The name used in config, metrics and errors: `request_headers`.
    pub fn phase(self) -> &'static str {
        match self {
            Hook::Init => "init",
            Hook::RequestHeaders => "request_headers",
            Hook::RequestBody => "request_body",
            Hook::ResponseHeaders => "response_headers",
            Hook::ResponseBody => "response_body",
            Hook::Done => "done",
        }
    }

    pub fn takes_body(self) -> bool {
        matches!(self, Hook::RequestBody | Hook::ResponseBody)
    }

    pub fn is_request(self) -> bool {
        matches!(self, Hook::RequestHeaders | Hook::RequestBody)
    }

    pub fn is_response(self) -> bool {
        matches!(self, Hook::ResponseHeaders | Hook::ResponseBody)
    }

    pub fn export(self) -> String {
        format!("{HANDLER}#{}", self.wit_name())
    }
}

pub fn resume_export() -> String {
    format!("{HANDLER}#on-resume")
}

pub fn post_return_export(export: &str) -> String {
    format!("cabi_post_{export}")
}

/// WIT `enum action`.
pub const CONTINUE: u32 = 0;
pub const RESPOND: u32 = 1;
pub const PAUSE: u32 = 2;

/// WIT `flags phases`: bits past the flags are ignored, as the canonical ABI says.
pub const ALL_PHASES: u32 = 31;
