//! What a host call needs from the gateway, asked while the guest is suspended.
//!
//! A host call that needs Python (shared state, a new metric family, room
//! for more events) posts a [`HostRequest`] and waits: its future returns
//! pending, the guest's fiber suspends, and the sandbox's poll returns to
//! Python, which performs the request on the event loop and posts the
//! [`HostAnswer`]. The next poll resumes the host call with it. Python is
//! never called from a guest's stack.
//!
//! The mailbox lives outside the store (a suspended call owns its store), as
//! do the events waiting to be drained and the clock of the running slice.

use std::future::poll_fn;
use std::sync::{Mutex, MutexGuard};
use std::task::Poll;
use std::time::{Duration, Instant};

use crate::events::Events;
use crate::failure::Failure;
use crate::metrics::MetricKind;

#[derive(Clone, Debug, PartialEq)]
pub enum HostRequest {
    CounterAdd {
        key: Vec<u8>,
        delta: i64,
        window_ms: u32,
        limit: Option<i64>,
        timeout: Duration,
    },
    KvGet {
        key: Vec<u8>,
        timeout: Duration,
    },
    KvSet {
        key: Vec<u8>,
        value: Vec<u8>,
        ttl_ms: u32,
        timeout: Duration,
    },
    KvDelete {
        key: Vec<u8>,
        timeout: Duration,
    },
    DefineMetric {
        id: u32,
        kind: MetricKind,
        name: String,
        help: String,
        labels: Vec<String>,
        buckets: Vec<f64>,
    },
    /// Too many events wait: drain them.
    Flush,
}

#[derive(Clone, Debug, PartialEq)]
pub enum HostAnswer {
    Counter {
        value: i64,
        reset_ms: u32,
        applied: bool,
    },
    Value(Option<Vec<u8>>),
    Done,
    /// The gateway refused a definition: the reason is the guest's `result`.
    Refused(String),
    /// The request failed the processor (state unavailable, deadline passed).
    Failed(Failure),
}

#[derive(Debug)]
pub struct Mailbox {
    /// When the running slice of guest time began: the epoch callback yields after half a tick of it.
    pub slice_started: Instant,
    request: Option<HostRequest>,
    answer: Option<HostAnswer>,
    pub events: Events,
}

/// What Python reaches while the store is suspended. One thread polls a sandbox, so the lock never waits.
#[derive(Debug)]
pub struct Shared(Mutex<Mailbox>);

impl Default for Shared {
    fn default() -> Shared {
        Shared(Mutex::new(Mailbox {
            slice_started: Instant::now(),
            request: None,
            answer: None,
            events: Events::default(),
        }))
    }
}

impl Shared {
    pub fn lock(&self) -> MutexGuard<'_, Mailbox> {
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Posts `request` and waits for its answer.
    pub async fn ask(&self, request: HostRequest) -> HostAnswer {
        {
            let mut mailbox = self.lock();
            mailbox.answer = None;
            mailbox.request = Some(request);
        }
        poll_fn(|_| match self.lock().answer.take() {
            Some(answer) => Poll::Ready(answer),
            None => Poll::Pending,
        })
        .await
    }

    /// The request waiting for an answer, if any.
    pub fn request(&self) -> Option<HostRequest> {
        self.lock().request.clone()
    }

    pub fn is_waiting(&self) -> bool {
        self.lock().request.is_some()
    }

    pub fn answer(&self, answer: HostAnswer) -> bool {
        let mut mailbox = self.lock();
        if mailbox.request.take().is_none() {
            return false;
        }
        mailbox.answer = Some(answer);
        true
    }
}

#[cfg(test)]
mod tests {
    use std::pin::pin;
    use std::task::{Context, Waker};

    use super::*;

    #[test]
    fn a_question_waits_until_it_is_answered() {
        let shared = Shared::default();
        let mut asking = pin!(shared.ask(HostRequest::Flush));
        let mut context = Context::from_waker(Waker::noop());
        assert!(asking.as_mut().poll(&mut context).is_pending());
        assert_eq!(shared.request(), Some(HostRequest::Flush));
        assert!(asking.as_mut().poll(&mut context).is_pending(), "still unanswered");
        assert!(shared.answer(HostAnswer::Done));
        assert_eq!(asking.as_mut().poll(&mut context), Poll::Ready(HostAnswer::Done));
        assert!(!shared.is_waiting());
    }

    #[test]
    fn an_answer_without_a_question_is_refused() {
        assert!(!Shared::default().answer(HostAnswer::Done));
    }
}
