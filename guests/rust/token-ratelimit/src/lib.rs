//! Token rate limits per identity, in the shape of Kuadrant's
//! `TokenRateLimitPolicy`: each limit gives an identity (the value of a
//! request header, such as a user id) a number of tokens per window; the
//! first limit whose predicate matches the request applies.
//!
//! ```yaml
//! config:
//!   limits:
//!     - name: free
//!       when: {header: x-tier, equals: free}   # optional: without it, the limit always applies
//!       tokens: 20000
//!       window: 24h                            # ms, s, m, h or d
//!   counter: {header: x-user-id}               # requests without it are not limited
//!   response:
//!     limited: {status: 429, headers: {content-type: application/json}, body: '{"error":"rate_limited"}'}
//! ```
//!
//! A request is refused (with `Retry-After`) when its identity has no
//! tokens left. The tokens a response used are charged when it ends: from
//! the `usage` of a JSON body, or of the last events of a stream (OpenAI's
//! `stream_options.include_usage`), read as the events pass, never buffered.
//! Requests already let in when the limit is reached are charged their own
//! usage too, so the charged total may pass the limit by what those
//! requests used, never more.

use wasmgate_sdk::json::{self, Json};
use wasmgate_sdk::metrics::Metric;
use wasmgate_sdk::{request, respond, response, state, Action, Phases, Processor, Response};

static CHARGED: Metric = Metric::counter("tokens_charged_total", "Tokens charged to identities, by limit.", &["limit"]);
static LIMITED: Metric =
    Metric::counter("requests_limited_total", "Requests refused for no tokens left, by limit.", &["limit"]);

struct Limit {
    name: String,
    when: Option<(String, String)>,
    tokens: i64,
    window_ms: u32,
}

struct TokenRateLimit {
    limits: Vec<Limit>,
    identity_header: String,
    limited: Response,
    /// The limit and counter this request is charged to.
    charge: Option<(usize, String)>,
    body: Vec<u8>,
    partial: Vec<u8>,
    charged: bool,
}

impl Default for TokenRateLimit {
    fn default() -> TokenRateLimit {
        TokenRateLimit {
            limits: Vec::new(),
            identity_header: String::new(),
            limited: Response::new(429)
                .header("content-type", "application/json")
                .body(r#"{"error":"rate_limited","message":"Token limit reached."}"#),
            charge: None,
            body: Vec::new(),
            partial: Vec::new(),
            charged: false,
        }
    }
}

fn window_ms(value: &Json, key: &str) -> Result<u32, String> {
    let text = value.as_str().ok_or(format!("{key}: must be a duration such as 60s or 24h"))?;
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let scale: u64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(format!("{key}: {text:?} is not a duration such as 60s or 24h")),
    };
    let ms = number.parse::<u64>().map_err(|_| format!("{key}: {text:?} is not a duration"))? * scale;
    u32::try_from(ms).ok().filter(|ms| *ms > 0).ok_or(format!("{key}: {text:?} must be between 1ms and 49 days"))
}

fn limit_from(value: &Json, i: usize) -> Result<Limit, String> {
    let key = format!("limits[{i}]");
    let name = value.get("name").and_then(Json::as_str).ok_or(format!("{key}.name: must be a string"))?;
    let tokens = value.get("tokens").and_then(Json::as_f64).filter(|t| *t >= 0.0);
    let tokens = tokens.ok_or(format!("{key}.tokens: must be a number of tokens"))? as i64;
    let window = window_ms(value.get("window").unwrap_or(&Json::Null), &format!("{key}.window"))?;
    let when = match value.get("when") {
        None => None,
        Some(when) => {
            let header =
                when.get("header").and_then(Json::as_str).ok_or(format!("{key}.when.header: must be a string"))?;
            let equals =
                when.get("equals").and_then(Json::as_str).ok_or(format!("{key}.when.equals: must be a string"))?;
            Some((header.to_owned(), equals.to_owned()))
        }
    };
    Ok(Limit { name: name.to_owned(), when, tokens, window_ms: window })
}

/// `usage.total_tokens` (or prompt + completion) of a completion.
fn tokens_used(completion: &Json) -> Option<i64> {
    let usage = completion.get("usage")?;
    let number = |key: &str| usage.get(key).and_then(Json::as_f64);
    let total = number("total_tokens").or_else(|| Some(number("prompt_tokens")? + number("completion_tokens")?))?;
    Some(total as i64)
}

impl TokenRateLimit {
    fn charge(&mut self, tokens: i64) {
        if self.charged {
            return;
        }
        self.charged = true;
        if let Some((i, key)) = &self.charge {
            let limit = &self.limits[*i];
            state::counter_add(key, tokens, limit.window_ms, None);
            CHARGED.record(&[&limit.name], tokens as f64);
        }
    }

    /// Reads the complete `data:` lines of a stream's chunk; the chunk passes on as it came.
    fn events(&mut self, chunk: &[u8]) {
        self.partial.extend_from_slice(chunk);
        while let Some(end) = self.partial.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=end).collect();
            let line = line.trim_ascii();
            if let Some(data) = line.strip_prefix(b"data:") {
                if let Some(tokens) = json::parse(data.trim_ascii()).ok().as_ref().and_then(tokens_used) {
                    self.charge(tokens);
                }
            }
        }
    }
}

impl Processor for TokenRateLimit {
    fn init(&mut self, config: &[u8]) -> Result<Phases, String> {
        let config = json::parse(config).map_err(|e| format!("config is not JSON: {e}"))?;
        for (key, value) in config.as_object().ok_or("config must be an object")? {
            match key.as_str() {
                "limits" => {
                    let limits = value.as_array().ok_or("limits: must be a list")?;
                    self.limits = limits.iter().enumerate().map(|(i, l)| limit_from(l, i)).collect::<Result<_, _>>()?;
                }
                "counter" => {
                    let header = value.get("header").and_then(Json::as_str);
                    self.identity_header = header.ok_or("counter.header: must be a header name")?.to_owned();
                }
                "response" => {
                    for (name, response) in value.as_object().ok_or("response: must be an object")? {
                        if name != "limited" {
                            return Err(format!("response.{name}: unknown key (expected limited)"));
                        }
                        self.limited = Response::from_config(response, "response.limited")?;
                    }
                }
                other => return Err(format!("{other}: unknown key (expected limits, counter or response)")),
            }
        }
        if self.identity_header.is_empty() {
            return Err("counter.header: required".into());
        }
        Ok(Phases::REQUEST_HEADERS | Phases::RESPONSE_BODY)
    }

    fn on_request_headers(&mut self, _end_of_stream: bool) -> Action {
        let Some(identity) = request::header(&self.identity_header) else {
            return Action::Continue;
        };
        let applies = |limit: &Limit| match &limit.when {
            None => true,
            Some((header, equals)) => request::header(header).as_deref() == Some(equals.as_str()),
        };
        let Some(i) = self.limits.iter().position(applies) else {
            return Action::Continue;
        };
        let limit = &self.limits[i];
        let key = format!("{}:{identity}", limit.name);
        let counter = state::counter_add(&key, 0, limit.window_ms, None);
        if counter.value >= limit.tokens {
            LIMITED.record(&[&limit.name], 1.0);
            let retry_after = counter.reset_ms.div_ceil(1000).max(1).to_string();
            return respond(self.limited.clone().header("retry-after", retry_after));
        }
        self.charge = Some((i, key));
        Action::Continue
    }

    fn on_response_body(&mut self, chunk: &[u8], end_of_stream: bool) -> Action {
        if self.charge.is_none() || response::status() >= 400 {
            return Action::Continue;
        }
        let streamed = response::header("content-type").is_some_and(|t| t.starts_with("text/event-stream"));
        if streamed {
            self.events(chunk);
        } else {
            self.body.extend_from_slice(chunk);
            if end_of_stream {
                if let Some(tokens) = json::parse(&self.body).ok().as_ref().and_then(tokens_used) {
                    self.charge(tokens);
                }
            }
        }
        Action::Continue
    }
}

wasmgate_sdk::register!(TokenRateLimit);
