//! Sub-requests (`host.call`): recorded while a hook runs, performed by the
//! gateway once the hook pauses, read by `on-resume` (`host.call-result`).
//!
//! The ledger of one processor in one request outlives its instances: when a
//! failed phase is tried again on a fresh instance, the ledger is rewound to
//! where the phase began, so the calls made again get the same handles (and
//! the gateway the same idempotency keys).

use std::collections::HashSet;
use std::time::Duration;

use url::Url;

use crate::failure::quoted;
use crate::headers::is_token;

/// Set on every sub-request by the gateway; a processor may not set them.
pub const GATEWAY_HEADERS: [&str; 3] = ["idempotency-key", "wasmgate-attempt", "wasmgate-depth"];

/// Where a processor may send: its sub-requests (its `subrequests` config) and the upstream it chooses.
#[derive(Clone, Debug, Default)]
pub struct CallPolicy {
    /// Origins (`scheme://host[:port]`) a call may reach; any other is denied, unsent.
    pub allow: HashSet<String>,
    /// Origins `set-upstream` may choose (its `upstreams` config); any other is refused.
    pub upstreams: HashSet<String>,
    pub max_concurrent: usize,
    pub timeout: Duration,
}

impl CallPolicy {
    /// Origins as they are compared: `scheme://host[:port]`, lower case, default ports dropped.
    pub fn new(
        allow: impl IntoIterator<Item = String>,
        upstreams: impl IntoIterator<Item = String>,
        max_concurrent: usize,
        timeout: Duration,
    ) -> CallPolicy {
        let origins = |texts: &mut dyn Iterator<Item = String>| {
            texts.map(|text| Url::parse(&text).map_or(text, |url| url.origin().ascii_serialization())).collect()
        };
        CallPolicy {
            allow: origins(&mut allow.into_iter()),
            upstreams: origins(&mut upstreams.into_iter()),
            max_concurrent,
            timeout,
        }
    }

    /// `url` as an upstream the processor may choose, or why it may not.
    pub fn upstream(&self, url: &str) -> Result<(), String> {
        let origin = http_url(url)?.origin().ascii_serialization();
        if !self.upstreams.contains(&origin) {
            return Err(format!("{} is not among the upstreams this processor may choose", quoted(&origin)));
        }
        Ok(())
    }
}

/// WIT `enum call-error`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallError {
    Timeout = 0,
    Connect = 1,
    Denied = 2,
    TooLarge = 3,
    Cancelled = 4,
}

impl CallError {
    pub fn from_code(code: u8) -> Option<CallError> {
        [CallError::Timeout, CallError::Connect, CallError::Denied, CallError::TooLarge, CallError::Cancelled]
            .into_iter()
            .find(|error| *error as u8 == code)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CallResult {
    Response(CallResponse),
    Error(CallError),
}

/// A call as a guest asked for it, borrowed from its memory.
pub struct CallRequest<'a> {
    pub method: &'a str,
    pub url: &'a str,
    pub headers: Vec<(String, String)>,
    pub body: &'a [u8],
    pub timeout_ms: u32,
}

#[derive(Debug)]
pub struct Call {
    pub handle: u32,
    pub method: String,
    pub url: String,
    /// `scheme://host[:port]`, as the allow-list is written.
    pub origin: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub timeout: Duration,
    pub result: Option<CallResult>,
}

impl Call {
    /// What the host holds for this call, counted against the processor's memory quota.
    pub fn held_bytes(&self) -> usize {
        let answer = match &self.result {
            Some(CallResult::Response(response)) => pairs_size(&response.headers) + response.body.len(),
            _ => 0,
        };
        self.method.len() + self.url.len() + pairs_size(&self.headers) + self.body.len() + answer
    }
}

/// `text` as an absolute http or https URL, or why it is not one: for sub-requests and upstreams alike.
pub fn http_url(text: &str) -> Result<Url, String> {
    let url = Url::parse(text).map_err(|error| format!("{} is not a URL: {error}", quoted(text)))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none_or(str::is_empty) {
        return Err(format!("{} is not an absolute http or https URL", quoted(text)));
    }
    Ok(url)
}

pub fn pairs_size(pairs: &[(String, String)]) -> usize {
    pairs.iter().map(|(n, v)| n.len() + v.len()).sum()
}

/// The calls of one processor in one request. Handles are sequence numbers, from 1.
#[derive(Debug, Default)]
pub struct Ledger {
    calls: Vec<Call>,
    /// Handles started since the last pause: what the next pause waits on.
    started: Vec<u32>,
}

impl Ledger {
    /// Records a call: its handle, or why it cannot be made (the guest's `result`).
    pub fn start(&mut self, policy: &CallPolicy, request: CallRequest<'_>) -> Result<u32, String> {
        if !is_token(request.method) {
            return Err(format!("{} is not an HTTP method", quoted(request.method)));
        }
        let target = http_url(request.url)?;
        if let Some((name, _)) =
            request.headers.iter().find(|(name, _)| GATEWAY_HEADERS.iter().any(|g| g.eq_ignore_ascii_case(name)))
        {
            return Err(format!("header {} is set by the gateway", quoted(name)));
        }
        let waiting = self.started.iter().filter(|&&handle| self.calls[handle as usize - 1].result.is_none()).count();
        if waiting >= policy.max_concurrent {
            return Err(format!("{} calls are already waiting (subrequests.max_concurrent)", policy.max_concurrent));
        }
        let origin = target.origin().ascii_serialization();
        let handle = self.calls.len() as u32 + 1;
        let timeout = match request.timeout_ms {
            0 => policy.timeout,
            ms => Duration::from_millis(u64::from(ms)),
        };
        let denied = !policy.allow.contains(&origin);
        self.calls.push(Call {
            handle,
            method: request.method.to_ascii_uppercase(),
            url: target.into(),
            origin,
            headers: request.headers,
            body: request.body.to_vec(),
            timeout,
            result: denied.then_some(CallResult::Error(CallError::Denied)),
        });
        self.started.push(handle);
        Ok(handle)
    }

    /// Whether calls were started since the last pause: a pause must wait on something.
    pub fn has_started(&self) -> bool {
        !self.started.is_empty()
    }

    /// The calls started since the last pause, taken for the gateway to perform (denied ones included, finished).
    pub fn take_started(&mut self) -> impl Iterator<Item = &Call> {
        let started = std::mem::take(&mut self.started);
        started.into_iter().map(|handle| &self.calls[handle as usize - 1])
    }

    pub fn finish(&mut self, handle: u32, result: CallResult) -> bool {
        match self.calls.get_mut((handle as usize).wrapping_sub(1)) {
            Some(call) if call.result.is_none() => {
                call.result = Some(result);
                true
            }
            _ => false,
        }
    }

    /// A finished call, for `call-result`.
    pub fn finished(&self, handle: u32) -> Option<&CallResult> {
        self.calls.get((handle as usize).wrapping_sub(1))?.result.as_ref()
    }

    /// Where the calls stand, for `rewind`.
    pub fn mark(&self) -> usize {
        self.calls.len()
    }

    /// Forgets the calls since `mark`: a phase tried again makes them again, under the same numbers.
    pub fn rewind(&mut self, mark: usize) {
        self.calls.truncate(mark);
        self.started.clear();
    }

    pub fn held_bytes(&self) -> usize {
        self.calls.iter().map(Call::held_bytes).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> CallPolicy {
        CallPolicy::new(
            ["http://ALLOWED.test:9000/".to_owned()],
            ["https://Up.test:443".to_owned()],
            2,
            Duration::from_secs(1),
        )
    }

    fn request(url: &str) -> CallRequest<'_> {
        CallRequest { method: "post", url, headers: vec![], body: b"{}", timeout_ms: 0 }
    }

    #[test]
    fn an_upstream_is_chosen_only_among_the_allowed_origins() {
        assert_eq!(policy().upstream("https://up.test/v1/chat?x=1"), Ok(()));
        assert_eq!(policy().upstream("https://UP.test:443/"), Ok(()));
        let refused = policy().upstream("https://up.test:8443/").unwrap_err();
        assert_eq!(refused, "'https://up.test:8443' is not among the upstreams this processor may choose");
        assert!(policy().upstream("http://up.test/").is_err());
        assert!(policy().upstream("ftp://up.test/").unwrap_err().contains("absolute http"));
    }

    #[test]
    fn a_call_to_an_allowed_origin_waits_to_be_performed() {
        let mut ledger = Ledger::default();
        assert_eq!(ledger.start(&policy(), request("http://ALLOWED.test:9000/v1?x=1")), Ok(1));
        let started: Vec<_> = ledger.take_started().map(|call| (call.method.clone(), call.result.clone())).collect();
        assert_eq!(started, vec![("POST".to_owned(), None)]);
        assert!(!ledger.has_started());
    }

    #[test]
    fn a_call_to_another_origin_is_denied_unsent() {
        let mut ledger = Ledger::default();
        ledger.start(&policy(), request("http://allowed.test:9001/")).unwrap();
        assert_eq!(ledger.finished(1), Some(&CallResult::Error(CallError::Denied)));
    }

    #[test]
    fn a_default_port_is_the_same_origin_without_it() {
        let mut allow = policy();
        allow.allow.insert("http://example.test".to_owned());
        let mut ledger = Ledger::default();
        ledger.start(&allow, request("http://example.test:80/x")).unwrap();
        assert_eq!(ledger.finished(1), None);
    }

    #[test]
    fn malformed_calls_are_refused_with_the_reason() {
        let mut ledger = Ledger::default();
        let bad_method = CallRequest { method: "GE T", ..request("http://allowed.test:9000/") };
        assert_eq!(ledger.start(&policy(), bad_method), Err("'GE T' is not an HTTP method".to_owned()));
        assert!(ledger.start(&policy(), request("ftp://allowed.test/")).unwrap_err().contains("absolute http"));
        assert!(ledger.start(&policy(), request("not a url")).unwrap_err().contains("is not a URL"));
        let reserved = CallRequest {
            headers: vec![("Idempotency-Key".to_owned(), "x".to_owned())],
            ..request("http://allowed.test:9000/")
        };
        assert!(ledger.start(&policy(), reserved).unwrap_err().contains("set by the gateway"));
    }

    #[test]
    fn no_more_than_max_concurrent_calls_wait_at_once() {
        let mut ledger = Ledger::default();
        ledger.start(&policy(), request("http://allowed.test:9000/")).unwrap();
        ledger.start(&policy(), request("http://allowed.test:9000/")).unwrap();
        let third = ledger.start(&policy(), request("http://allowed.test:9000/"));
        assert!(third.unwrap_err().contains("max_concurrent"));
    }

    #[test]
    fn rewinding_makes_the_next_call_reuse_the_handle() {
        let mut ledger = Ledger::default();
        ledger.start(&policy(), request("http://allowed.test:9000/")).unwrap();
        let mark = ledger.mark();
        ledger.start(&policy(), request("http://allowed.test:9000/")).unwrap();
        ledger.rewind(mark);
        assert_eq!(ledger.start(&policy(), request("http://allowed.test:9000/")), Ok(2));
    }

    #[test]
    fn held_bytes_count_the_call_and_its_answer() {
        let mut ledger = Ledger::default();
        ledger.start(&policy(), request("http://allowed.test:9000/")).unwrap();
        let before = ledger.held_bytes();
        let answer = CallResponse { status: 200, headers: vec![("a".into(), "bc".into())], body: vec![0; 100] };
        assert!(ledger.finish(1, CallResult::Response(answer)));
        assert_eq!(ledger.held_bytes(), before + 103);
        assert!(!ledger.finish(1, CallResult::Error(CallError::Timeout)), "a call finishes once");
    }
}
