//! One request and its response, as the processors on its route see and change them.
//!
//! The host owns this state, not any instance: every processor of the
//! request works on the same exchange, a failed processor's instance can be
//! discarded without losing what the request is, and the gateway reads it
//! between hooks. What one processor keeps across its instances in the request
//! (its checkpoint and its sub-requests) is its [`Scope`].

use std::sync::{Arc, Mutex, MutexGuard};

use crate::calls::Ledger;
use crate::headers::HeaderMap;

/// What `get-request-info` returns; fixed for the request's life.
#[derive(Clone, Debug, Default)]
pub struct Facts {
    pub method: String,
    pub path: String,
    pub query: String,
    pub request_id: String,
    pub route: String,
    pub tenant: String,
    pub client_address: String,
}

/// What one processor keeps in one request, whichever instance serves it.
#[derive(Debug, Default)]
pub struct Scope {
    pub checkpoint: Option<Vec<u8>>,
    pub calls: Ledger,
}

#[derive(Debug)]
pub struct ExchangeData {
    pub facts: Facts,
    pub request_headers: HeaderMap,
    pub upstream: String,
    /// 0 while there is no response yet.
    pub response_status: u16,
    pub response_headers: Option<HeaderMap>,
    /// The request headers (and the upstream) have left the gateway: they can no longer change.
    pub request_sent: bool,
    /// The response headers have left the gateway.
    pub response_sent: bool,
    /// One per processor of the route, by position.
    pub scopes: Vec<Scope>,
}

/// What a `fail_open` processor's failed hook, or a failed try of a phase, may have changed.
#[derive(Clone, Debug)]
pub struct Snapshot {
    request_headers: HeaderMap,
    upstream: String,
    response_status: u16,
    response_headers: Option<HeaderMap>,
}

#[derive(Clone, Debug)]
pub struct Exchange(Arc<Mutex<ExchangeData>>);

impl Exchange {
    pub fn new(facts: Facts, request_headers: HeaderMap, upstream: String, processors: usize) -> Exchange {
        Exchange(Arc::new(Mutex::new(ExchangeData {
            facts,
            request_headers,
            upstream,
            response_status: 0,
            response_headers: None,
            request_sent: false,
            response_sent: false,
            scopes: (0..processors).map(|_| Scope::default()).collect(),
        })))
    }

    /// The exchange's data. Only one thread drives a request and no lock is
    /// held across a call into a guest, so this never waits.
    pub fn lock(&self) -> MutexGuard<'_, ExchangeData> {
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn snapshot(&self) -> Snapshot {
        let data = self.lock();
        Snapshot {
            request_headers: data.request_headers.clone(),
            upstream: data.upstream.clone(),
            response_status: data.response_status,
            response_headers: data.response_headers.clone(),
        }
    }

    pub fn restore(&self, snapshot: Snapshot) {
        let mut data = self.lock();
        data.request_headers = snapshot.request_headers;
        data.upstream = snapshot.upstream;
        data.response_status = snapshot.response_status;
        data.response_headers = snapshot.response_headers;
    }
}
