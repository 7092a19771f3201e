//! Work kept off the thread that serves requests: instances made and
//! started ahead of need, and instances dropped after use.
//!
//! Making an instance (a memory slot mapped, the module's image, `init`)
//! and dropping one (its memory reset for the next) are most of what a fresh
//! instance costs. A janitor thread per engine does both, so a request takes
//! an instance that is started already and leaves its used one behind.
//!
//! A prepared instance is exactly what a request would have made: a new
//! instance, `init` run with the processor's config, never used by any
//! request. What a request then does with it is the same as with one it
//! starts itself; one it cannot have (none ready) it starts itself.

use std::any::Any;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::guest::Guest;
use crate::sandbox::{Sandbox, Status};

enum Chore {
    /// Something to drop here: a used instance's store, say.
    Drop(Box<dyn Any + Send>),
    /// Start one more instance for a stock that may want it.
    Prepare(Weak<Stock>),
    Stop,
}

/// Drops the janitor may lag behind. Past them the caller drops its own: a
/// dropped instance holds its slot and its memory mappings until it is
/// dropped, so a janitor that fell behind a burst would run the machine out
/// of both.
const MAX_BEHIND: usize = 64;

/// What makes sandboxes, and sends work to the janitor. Cheap to clone.
#[derive(Clone)]
pub struct Maker {
    pub engine: wasmtime::Engine,
    pub tick: Duration,
    chores: Sender<Chore>,
    /// Drops sent to the janitor and not done yet.
    behind: Arc<AtomicUsize>,
}

impl Maker {
    /// A new, unstarted sandbox of `guest`.
    pub fn sandbox(&self, guest: Arc<Guest>) -> Sandbox {
        Sandbox::new(self.clone(), guest)
    }

    /// Drops `thing` on the janitor's thread; here when the janitor is `MAX_BEHIND` drops behind
    /// or has stopped.
    pub fn dispose(&self, thing: Box<dyn Any + Send>) {
        if self.behind.fetch_add(1, Ordering::Relaxed) >= MAX_BEHIND {
            self.behind.fetch_sub(1, Ordering::Relaxed);
            return drop(thing);
        }
        if let Err(unsent) = self.chores.send(Chore::Drop(thing)) {
            self.behind.fetch_sub(1, Ordering::Relaxed);
            drop(unsent);
        }
    }

    fn prepare(&self, stock: &Arc<Stock>) {
        let _ = self.chores.send(Chore::Prepare(Arc::downgrade(stock)));
    }
}

/// The janitor thread of one engine; stops when dropped.
pub struct Janitor {
    pub maker: Maker,
    thread: Option<JoinHandle<()>>,
}

impl Janitor {
    pub fn start(engine: wasmtime::Engine, tick: Duration) -> Janitor {
        let (chores, receiver) = channel();
        let maker = Maker { engine, tick, chores, behind: Arc::new(AtomicUsize::new(0)) };
        let working = maker.clone();
        let thread = std::thread::Builder::new()
            .name("wasmgate-janitor".into())
            .spawn(move || work(&working, receiver))
            .expect("the janitor's thread starts");
        Janitor { maker, thread: Some(thread) }
    }
}

impl Drop for Janitor {
    fn drop(&mut self) {
        let _ = self.maker.chores.send(Chore::Stop);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn work(maker: &Maker, chores: Receiver<Chore>) {
    for chore in chores {
        match chore {
            Chore::Drop(thing) => {
                drop(thing);
                maker.behind.fetch_sub(1, Ordering::Relaxed);
            }
            Chore::Prepare(stock) => {
                if let Some(stock) = stock.upgrade() {
                    stock.make_one(maker);
                }
            }
            Chore::Stop => break,
        }
    }
}

/// Started, never-used instances of one processor, ready for the requests that need a new one.
pub struct Stock {
    guest: Arc<Guest>,
    target: usize,
    ready: Mutex<Vec<Sandbox>>,
    maker: Maker,
}

impl Stock {
    /// Keeps up to `target` instances of `guest` ready, once `fill` is called.
    pub fn new(guest: Arc<Guest>, target: usize, maker: Maker) -> Arc<Stock> {
        Arc::new(Stock { guest, target, ready: Mutex::new(Vec::new()), maker })
    }

    /// Starts making instances until `target` are ready.
    pub fn fill(self: &Arc<Stock>) {
        for _ in 0..self.target {
            self.maker.prepare(self);
        }
    }

    /// A started instance nobody has used, if one is ready; another is made to replace it.
    pub fn take(self: &Arc<Stock>) -> Option<Sandbox> {
        let taken = self.ready.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).pop();
        if taken.is_some() {
            self.maker.prepare(self);
        }
        taken
    }

    fn make_one(&self, maker: &Maker) {
        if self.ready.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).len() >= self.target {
            return;
        }
        let mut sandbox = maker.sandbox(self.guest.clone());
        let status = match sandbox.start(true) {
            Status::Yielded => sandbox.run_blocking(),
            status => status,
        };
        // An instance whose start failed or asked the gateway something is not kept:
        // the request that needs one starts its own, and sees what happens.
        if let Status::Done(_) = status {
            self.ready.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).push(sandbox);
        }
    }
}
