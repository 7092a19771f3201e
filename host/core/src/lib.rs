//! The per-request sandbox of wasmgate, in Rust: wasmtime with the pooling
//! allocator, the WIT world's host calls and WASI preview 1, and guests
//! driven as futures that yield at epoch ticks. The Python package drives it
//! (`wasmgate._core`, with the `python` feature); everything else here is
//! plain Rust, tested with `cargo test`.

pub mod abi;
pub mod calls;
pub mod engine;
pub mod events;
pub mod exchange;
pub mod failure;
pub mod guest;
pub mod headers;
mod hostcalls;
pub mod image;
pub mod instance;
pub mod janitor;
mod linking;
pub mod memory;
pub mod metrics;
pub mod module;
pub mod requests;
pub mod sandbox;
mod wasi;

#[cfg(feature = "python")]
mod python;
