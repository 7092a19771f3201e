//! WASI preview 1, locked down: what a Go (or other WASI) guest's runtime needs, nothing more.
//!
//! No preopened directories, no environment, no arguments: a guest reaches
//! nothing outside its sandbox. Its stdout and stderr go to the gateway's
//! log under its processor's name, bounded like `host.log`. Clocks and
//! `random_get` work. `proc_exit` ends the guest with `trap`; `poll_oneoff`
//! answers every subscription at once (a guest cannot make its thread sleep).
//! As in `hostcalls`, work a guest can size is linear in what it passes, and
//! long work checks the phase's deadline as it goes.

use wasmtime::Caller;

use crate::abi::WASI_MODULE;
use crate::failure::{Cause, Failure};
use crate::instance::InstanceState;
use crate::linking::{Imports, define};
use crate::memory::{bytes, bytes_mut, pairs};

const SUCCESS: u32 = 0;
const EBADF: u32 = 8;
const EINVAL: u32 = 28;
const STDIN: u32 = 0;
const STDOUT: u32 = 1;
const STDERR: u32 = 2;
const CHARACTER_DEVICE: u8 = 2;
const RIGHT_FD_READ: u64 = 1 << 1;
const RIGHT_FD_WRITE: u64 = 1 << 6;
/// How much `random_get` fills between looks at the deadline.
const CHUNK: usize = 1 << 20;
/// How many `fd_write` iovecs or `poll_oneoff` subscriptions are read between looks at the deadline.
const ITEMS_PER_CHECK: usize = 4096;

type Ctx<'a, 'b> = &'a mut Caller<'b, InstanceState>;
type Errno = Result<u32, Failure>;

pub fn define(imports: &mut Imports) -> wasmtime::Result<()> {
    define!(imports, WASI_MODULE, "fd_write", sync fd_write(fd: u32, iovs: u32, count: u32, written: u32) -> u32);
    define!(imports, WASI_MODULE, "fd_read", sync fd_read(fd: u32, iovs: u32, count: u32, read: u32) -> u32);
    define!(imports, WASI_MODULE, "fd_close", sync fd_close(fd: u32) -> u32);
    define!(imports, WASI_MODULE, "fd_fdstat_get", sync fd_fdstat_get(fd: u32, result: u32) -> u32);
    define!(imports, WASI_MODULE, "fd_fdstat_set_flags", sync fd_fdstat_set_flags(fd: u32, flags: u32) -> u32);
    define!(imports, WASI_MODULE, "fd_prestat_get", sync fd_prestat_get(fd: u32, result: u32) -> u32);
    define!(imports, WASI_MODULE, "fd_prestat_dir_name", sync fd_prestat_dir_name(fd: u32, path: u32, len: u32) -> u32);
    define!(imports, WASI_MODULE, "clock_time_get", sync clock_time_get(clock: u32, precision: i64, result: u32) -> u32);
    define!(imports, WASI_MODULE, "random_get", sync random_get(buffer: u32, len: u32) -> u32);
    define!(imports, WASI_MODULE, "proc_exit", sync proc_exit(code: u32));
    define!(imports, WASI_MODULE, "args_sizes_get", sync args_sizes_get(count: u32, size: u32) -> u32);
    define!(imports, WASI_MODULE, "environ_sizes_get", sync environ_sizes_get(count: u32, size: u32) -> u32);
    define!(imports, WASI_MODULE, "args_get", sync args_get(pointers: u32, buffer: u32) -> u32);
    define!(imports, WASI_MODULE, "environ_get", sync environ_get(pointers: u32, buffer: u32) -> u32);
    define!(imports, WASI_MODULE, "sched_yield", sync sched_yield() -> u32);
    define!(
        imports,
        WASI_MODULE,
        "poll_oneoff",
        sync poll_oneoff(subscriptions: u32, events: u32, count: u32, out: u32) -> u32
    );
    Ok(())
}

fn write(caller: Ctx, ptr: u32, data: &[u8], what: &str) -> Result<(), Failure> {
    let memory = caller.data().exports().memory.data_mut(&mut *caller);
    bytes_mut(memory, ptr, data.len(), what)?.copy_from_slice(data);
    Ok(())
}

fn is_standard(fd: u32) -> bool {
    matches!(fd, STDIN | STDOUT | STDERR)
}

fn fd_write(caller: Ctx, fd: u32, iovs: u32, count: u32, written: u32) -> Errno {
    if fd != STDOUT && fd != STDERR {
        return Ok(EBADF);
    }
    let state = caller.data();
    let memory = state.exports().memory;
    let room = state.quota.room(memory.data_size(&*caller));
    let data = memory.data(&*caller);
    let mut total: u32 = 0;
    {
        let mut mailbox = state.shared.lock();
        mailbox.events.set_room(room);
        for (i, (ptr, len)) in pairs(data, iovs, count, "iovecs")?.enumerate() {
            if i % ITEMS_PER_CHECK == ITEMS_PER_CHECK - 1 {
                state.check_deadline()?;
            }
            mailbox.events.output(fd, bytes(data, ptr, len as usize, "fd_write's data")?);
            total = total.saturating_add(len);
        }
    }
    write(caller, written, &total.to_le_bytes(), "fd_write's result")?;
    Ok(SUCCESS)
}

fn fd_read(caller: Ctx, fd: u32, _iovs: u32, _count: u32, read: u32) -> Errno {
    if fd != STDIN {
        return Ok(EBADF);
    }
    write(caller, read, &0u32.to_le_bytes(), "fd_read's result")?; // stdin is empty
    Ok(SUCCESS)
}

fn fd_close(_caller: Ctx, fd: u32) -> Errno {
    Ok(if is_standard(fd) { SUCCESS } else { EBADF })
}

fn fd_fdstat_get(caller: Ctx, fd: u32, result: u32) -> Errno {
    if !is_standard(fd) {
        return Ok(EBADF); // no other descriptors, and no preopened directories
    }
    let rights = if fd == STDIN { RIGHT_FD_READ } else { RIGHT_FD_WRITE };
    // fdstat: filetype u8, flags u16 at 2, rights_base u64 at 8, rights_inheriting u64 at 16
    let mut stat = [0u8; 24];
    stat[0] = CHARACTER_DEVICE;
    stat[8..16].copy_from_slice(&rights.to_le_bytes());
    write(caller, result, &stat, "fd_fdstat_get's result")?;
    Ok(SUCCESS)
}

fn fd_fdstat_set_flags(_caller: Ctx, fd: u32, _flags: u32) -> Errno {
    Ok(if is_standard(fd) { SUCCESS } else { EBADF })
}

fn fd_prestat_get(_caller: Ctx, _fd: u32, _result: u32) -> Errno {
    Ok(EBADF) // no preopened directories: the guest sees no file system
}

fn fd_prestat_dir_name(_caller: Ctx, _fd: u32, _path: u32, _len: u32) -> Errno {
    Ok(EBADF)
}

fn clock_time_get(caller: Ctx, clock: u32, _precision: i64, result: u32) -> Errno {
    let id = match clock {
        0 => libc::CLOCK_REALTIME,
        1 => libc::CLOCK_MONOTONIC,
        2 => libc::CLOCK_PROCESS_CPUTIME_ID,
        3 => libc::CLOCK_THREAD_CPUTIME_ID,
        _ => return Ok(EINVAL),
    };
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `now` is a valid timespec to write, and `id` a clock this system has.
    if unsafe { libc::clock_gettime(id, &mut now) } != 0 {
        return Ok(EINVAL);
    }
    let nanos = (now.tv_sec as u64).wrapping_mul(1_000_000_000).wrapping_add(now.tv_nsec as u64);
    write(caller, result, &nanos.to_le_bytes(), "clock_time_get's result")?;
    Ok(SUCCESS)
}

fn random_get(caller: Ctx, buffer: u32, len: u32) -> Errno {
    let deadline_check = |state: &InstanceState| state.check_deadline();
    let memory = caller.data().exports().memory;
    let (data, state) = memory.data_and_store_mut(&mut *caller);
    let target = bytes_mut(data, buffer, len as usize, "random_get's buffer")?;
    for chunk in target.chunks_mut(CHUNK) {
        deadline_check(state)?;
        getrandom::fill(chunk).map_err(|error| Failure::new(Cause::HostError, format!("random_get: {error}")))?;
    }
    Ok(SUCCESS)
}

fn proc_exit(_caller: Ctx, code: u32) -> Result<(), Failure> {
    Err(Failure::new(Cause::Trap, format!("the guest exited with code {code}")))
}

/// No arguments and no environment: both counts are 0.
fn nothing(caller: Ctx, count: u32, size: u32) -> Errno {
    write(caller, count, &0u32.to_le_bytes(), "the count")?;
    write(caller, size, &0u32.to_le_bytes(), "the size")?;
    Ok(SUCCESS)
}

fn args_sizes_get(caller: Ctx, count: u32, size: u32) -> Errno {
    nothing(caller, count, size)
}

fn environ_sizes_get(caller: Ctx, count: u32, size: u32) -> Errno {
    nothing(caller, count, size)
}

fn args_get(_caller: Ctx, _pointers: u32, _buffer: u32) -> Errno {
    Ok(SUCCESS)
}

fn environ_get(_caller: Ctx, _pointers: u32, _buffer: u32) -> Errno {
    Ok(SUCCESS)
}

fn sched_yield(_caller: Ctx) -> Errno {
    Ok(SUCCESS)
}

fn poll_oneoff(caller: Ctx, subscriptions: u32, events: u32, count: u32, out: u32) -> Errno {
    // subscription: userdata u64, tag u8 (48 bytes); event: userdata u64, errno u16, type u8 (32 bytes)
    let memory = caller.data().exports().memory;
    let (data, state) = memory.data_and_store_mut(&mut *caller);
    let count = count as usize;
    bytes(data, subscriptions, count * 48, "poll_oneoff's subscriptions")?;
    bytes(data, events, count * 32, "poll_oneoff's events")?;
    let (subscriptions, events) = (subscriptions as usize, events as usize);
    for i in 0..count {
        if i % ITEMS_PER_CHECK == ITEMS_PER_CHECK - 1 {
            state.check_deadline()?;
        }
        let subscription = subscriptions + i * 48;
        let mut event = [0u8; 32];
        event[..8].copy_from_slice(&data[subscription..subscription + 8]);
        event[10] = data[subscription + 8];
        data[events + i * 32..events + i * 32 + 32].copy_from_slice(&event);
    }
    write(caller, out, &(count as u32).to_le_bytes(), "poll_oneoff's count")?;
    Ok(SUCCESS)
}
