//! State shared by every worker and replica of the gateway: counters in
//! fixed windows, and a small key-value store. Keys are this processor's
//! own. When the gateway's state backend fails, the processor fails with
//! `state_unavailable`, and when a write would pass its `state_quota`, with
//! `state_quota`, by its failure mode: these calls do not return errors.
//!
//! ```ignore
//! // At most 100 requests a minute per user: a check-and-add never overshoots.
//! let counter = state::counter_add(&format!("user:{user}"), 1, 60_000, Some(100));
//! if !counter.applied {
//!     return respond(Response::new(429).header("retry-after", (counter.reset_ms / 1000 + 1).to_string()));
//! }
//! ```

use crate::hostcalls;
pub use crate::types::Counter;

/// Adds `delta` to a counter atomically and returns it. A counter lives in a
/// window of `window_ms` from its first add, then starts again from 0. With
/// `limit`, the delta is added only if the value stays at or under it.
pub fn counter_add(key: &str, delta: i64, window_ms: u32, limit: Option<i64>) -> Counter {
    hostcalls::counter_add(key, delta, window_ms, limit)
}

/// A value (at most 64 KiB), if it is there.
pub fn get(key: &str) -> Option<Vec<u8>> {
    hostcalls::kv_get(key)
}

/// Sets a value for `ttl_ms` milliseconds (0: until deleted).
pub fn set(key: &str, value: &[u8], ttl_ms: u32) {
    hostcalls::kv_set(key, value, ttl_ms)
}

pub fn delete(key: &str) {
    hostcalls::kv_delete(key)
}
