//! The handler's entry points, routed to the registered processor. Hidden
//! from users: they implement [`crate::Processor`] and call
//! [`crate::register!`], which exports these under the world's names.

use core::cell::UnsafeCell;
use std::alloc::{self, Layout};
use std::sync::Once;

use crate::hostcalls;
use crate::traits::Processor;
use crate::types::LogLevel;

/// Interior mutability for the instance's single thread: the gateway never
/// runs two hooks of one instance at once.
struct Single<T>(UnsafeCell<T>);
unsafe impl<T> Sync for Single<T> {}

static PROCESSOR: Single<Option<Box<dyn Processor>>> = Single(UnsafeCell::new(None));
/// `init`'s return area: `result<phases, string>`, read by the host after `init` returns.
static INIT_RESULT: Single<[u32; 3]> = Single(UnsafeCell::new([0; 3]));

fn processor() -> &'static mut dyn Processor {
    // SAFETY: hooks of one instance never overlap (see `Single`), and the
    // gateway calls `init`, which creates the processor, before any other hook.
    unsafe { (*PROCESSOR.0.get()).as_deref_mut().expect("the gateway calls init first") }
}

/// Takes ownership of a body the host copied in through `cabi_realloc`.
unsafe fn take_body(ptr: *mut u8, len: usize) -> Vec<u8> {
    if len == 0 {
        return Vec::new();
    }
    Vec::from_raw_parts(ptr, len, len)
}

/// Sends a panic's message to the gateway's log before the instance aborts,
/// so the failure says what went wrong.
fn report_panics() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| std::panic::set_hook(Box::new(|info| hostcalls::log(LogLevel::Error, &info.to_string()))));
}

pub unsafe fn init<P: Processor + Default + 'static>(config: *mut u8, len: usize) -> *mut u32 {
    report_panics();
    let config = take_body(config, len);
    let processor = (*PROCESSOR.0.get()).insert(Box::new(P::default()));
    let ret = INIT_RESULT.0.get() as *mut u32;
    match processor.init(&config) {
        Ok(phases) => {
            *ret = 0;
            *ret.add(1) = phases.bits() as u32;
        }
        Err(message) => {
            let message = message.into_bytes().into_boxed_slice();
            let len = message.len();
            *ret = 1;
            *ret.add(1) = Box::into_raw(message) as *mut u8 as u32;
            *ret.add(2) = len as u32;
        }
    }
    ret
}

pub unsafe fn init_post_return(ret: *mut u32) {
    if *ret & 0xff == 1 {
        let message = core::ptr::slice_from_raw_parts_mut(*ret.add(1) as *mut u8, *ret.add(2) as usize);
        drop(Box::from_raw(message));
    }
}

pub fn on_request_headers(end_of_stream: i32) -> i32 {
    processor().on_request_headers(end_of_stream != 0) as i32
}

pub unsafe fn on_request_body(body: *mut u8, len: usize, end_of_stream: i32) -> i32 {
    let body = take_body(body, len);
    processor().on_request_body(&body, end_of_stream != 0) as i32
}

pub fn on_response_headers(end_of_stream: i32) -> i32 {
    processor().on_response_headers(end_of_stream != 0) as i32
}

pub unsafe fn on_response_body(body: *mut u8, len: usize, end_of_stream: i32) -> i32 {
    let body = take_body(body, len);
    processor().on_response_body(&body, end_of_stream != 0) as i32
}

pub fn on_resume() -> i32 {
    processor().on_resume() as i32
}

pub fn on_done() {
    processor().on_done()
}

/// The canonical ABI's allocator: the host asks it for room for what it hands in.
#[no_mangle]
unsafe extern "C" fn cabi_realloc(old: *mut u8, old_len: usize, align: usize, new_len: usize) -> *mut u8 {
    let layout;
    let ptr = if old_len == 0 {
        if new_len == 0 {
            return align as *mut u8;
        }
        layout = Layout::from_size_align_unchecked(new_len, align);
        alloc::alloc(layout)
    } else {
        layout = Layout::from_size_align_unchecked(old_len, align);
        alloc::realloc(old, layout, new_len)
    };
    if ptr.is_null() {
        alloc::handle_alloc_error(layout);
    }
    ptr
}
