//! Why a processor failed: one precise cause per failure.
//!
//! Every way a guest can stop is a [`Failure`]: a host call or the memory
//! limiter returns one as the error that unwinds the guest, and [`classify`]
//! finds it again by type, or reads a trap's code. Nothing is told apart by
//! the text of a message.

use std::borrow::Cow;
use std::fmt;

use wasmtime::{PoolConcurrencyLimitError, Trap, WasmBacktrace};

/// Mirrors `wasmgate.runtime.Cause`; the strings are the values operators see.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cause {
    /// The phase ran past its deadline.
    Timeout,
    /// The guest's memory, or the bytes the host holds for it, passed its quota.
    MemoryLimit,
    /// The guest trapped.
    Trap,
    /// The guest broke the ABI: a bad pointer, length, UTF-8 or argument, or a
    /// host call where it is not allowed.
    AbiViolation,
    /// The guest's `init` refused its config.
    InitFailed,
    /// No instance slot was free.
    Overloaded,
    /// The shared state's backend failed.
    StateUnavailable,
    /// A write would take the processor's shared state past its quota.
    StateQuota,
    /// The host itself failed (a bug): the processor is discarded, the gateway goes on.
    HostError,
}

impl Cause {
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::Timeout => "timeout",
            Cause::MemoryLimit => "memory_limit",
            Cause::Trap => "trap",
            Cause::AbiViolation => "abi_violation",
            Cause::InitFailed => "init_failed",
            Cause::Overloaded => "overloaded",
            Cause::StateUnavailable => "state_unavailable",
            Cause::StateQuota => "state_quota",
            Cause::HostError => "host_error",
        }
    }

    pub fn parse(text: &str) -> Option<Cause> {
        [
            Cause::Timeout,
            Cause::MemoryLimit,
            Cause::Trap,
            Cause::AbiViolation,
            Cause::InitFailed,
            Cause::Overloaded,
            Cause::StateUnavailable,
            Cause::StateQuota,
            Cause::HostError,
        ]
        .into_iter()
        .find(|cause| cause.as_str() == text)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub cause: Cause,
    pub detail: String,
}

impl Failure {
    pub fn new(cause: Cause, detail: impl Into<String>) -> Failure {
        Failure { cause, detail: detail.into() }
    }

    pub fn abi(detail: impl Into<String>) -> Failure {
        Failure::new(Cause::AbiViolation, detail)
    }

    pub fn memory(detail: impl Into<String>) -> Failure {
        Failure::new(Cause::MemoryLimit, detail)
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.cause.as_str(), self.detail)
    }
}

impl std::error::Error for Failure {}

/// The precise failure behind an error that stopped a guest.
pub fn classify(error: wasmtime::Error) -> Failure {
    if let Some(failure) = error.downcast_ref::<Failure>() {
        return failure.clone();
    }
    if let Some(trap) = error.downcast_ref::<Trap>() {
        let frame = error.downcast_ref::<WasmBacktrace>().and_then(innermost_frame);
        let detail = match frame {
            Some(frame) => format!("{trap} (in {frame})"),
            None => trap.to_string(),
        };
        return Failure::new(Cause::Trap, detail);
    }
    if error.is::<PoolConcurrencyLimitError>() {
        return Failure::new(Cause::Overloaded, format!("no free instance slot: {error}"));
    }
    if let Some(errno) = error.downcast_ref::<rustix::io::Errno>() {
        // The kernel refused to map memory for an instance (a slot, a stack):
        // the machine's limits, such as vm.max_map_count, not the guest's doing.
        return Failure::new(Cause::Overloaded, format!("the host could not map memory for the instance: {errno}"));
    }
    // wasmtime refused something the module asked for (a segment out of
    // bounds at instantiation, say): the guest's doing, not the host's.
    Failure::new(Cause::Trap, format!("{error:#}"))
}

/// An error from a call the host makes for a host call (`cabi_realloc`):
/// a failure passes through as it is, a trap says where it happened.
pub fn nested(error: wasmtime::Error, during: &str) -> Failure {
    let failure = classify(error);
    match failure.cause {
        Cause::Trap => Failure::new(Cause::Trap, format!("cabi_realloc trapped in {during}: {}", failure.detail)),
        _ => failure,
    }
}

fn innermost_frame(backtrace: &WasmBacktrace) -> Option<String> {
    let frame = backtrace.frames().first()?;
    let module = frame.module().name().unwrap_or("<module>");
    Some(match frame.func_name() {
        Some(name) => format!("{module}!{name}"),
        None => format!("{module}!<wasm function {}>", frame.func_index()),
    })
}

/// A guest-facing rendering of a name or value, as Python's `repr` writes strings.
pub fn quoted(text: &str) -> String {
    format!("'{}'", text.escape_debug().to_string().replace('\'', "\\'"))
}

/// Guest text for the gateway's log: control characters but tab escaped as `\xNN`, so a guest cannot
/// start a line of its own (a forged access line, say).
pub fn escaped(text: &str) -> Cow<'_, str> {
    let control = |c: char| c.is_ascii_control() && c != '\t';
    if !text.contains(control) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if control(c) {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            let code = c as usize; // ASCII
            out.extend(['\\', 'x', HEX[code >> 4] as char, HEX[code & 15] as char]);
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_but_tab_are_escaped_and_the_rest_is_kept() {
        assert_eq!(escaped("a\nb\0\tc\x7fé"), "a\\x0ab\\x00\tc\\x7fé");
        assert!(matches!(escaped("plain\ttext"), Cow::Borrowed(_)));
    }

    #[test]
    fn a_failure_returned_through_wasmtime_is_found_again_by_type() {
        let error = wasmtime::Error::new(Failure::abi("bad pointer"));
        assert_eq!(classify(error), Failure::abi("bad pointer"));
    }

    #[test]
    fn a_trap_is_classified_by_its_code() {
        let failure = classify(wasmtime::Error::new(Trap::IntegerDivisionByZero));
        assert_eq!(failure.cause, Cause::Trap);
        assert!(failure.detail.contains("integer divide by zero"), "{}", failure.detail);
    }

    #[test]
    fn the_kernel_refusing_memory_for_an_instance_is_overloaded() {
        let failure = classify(wasmtime::Error::new(rustix::io::Errno::NOMEM));
        assert_eq!(failure.cause, Cause::Overloaded);
        assert!(failure.detail.starts_with("the host could not map memory for the instance: "), "{}", failure.detail);
    }

    #[test]
    fn a_trap_in_cabi_realloc_names_the_host_call_it_served() {
        let failure = nested(wasmtime::Error::new(Trap::UnreachableCodeReached), "get-headers");
        assert!(failure.detail.starts_with("cabi_realloc trapped in get-headers: "), "{}", failure.detail);
    }

    #[test]
    fn every_cause_parses_back_from_its_name() {
        for name in ["timeout", "memory_limit", "trap", "abi_violation", "init_failed", "overloaded"] {
            assert_eq!(Cause::parse(name).map(Cause::as_str), Some(name));
        }
        assert_eq!(Cause::parse("nonsense"), None);
    }

    #[test]
    fn quoting_follows_pythons_repr() {
        assert_eq!(quoted("x-name"), "'x-name'");
        assert_eq!(quoted("a\r\nb"), "'a\\r\\nb'");
    }
}
