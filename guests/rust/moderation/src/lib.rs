//! What the prompt and response guards share: their config, and a call to a
//! moderation service speaking the OpenAI moderations API
//! (`POST {"input": "..."}`, answered `{"results": [{"flagged": bool, "categories": {"violence": true, ...}}]}`).
//!
//! Config, as the Kuadrant `LLMPromptRiskCheckPolicy` example:
//!
//! ```yaml
//! moderation_url: http://127.0.0.1:9000/v1/moderations
//! categories: [harm, violence, sexual]     # block when one of these is flagged; empty: when `flagged`
//! response:
//!   unauthorized: {status: 403, headers: {content-type: application/json}, body: '{"error":"Unauthorized"}'}
//! ```
//!
//! A moderation service that does not answer with a verdict fails the
//! processor (it panics with the reason), so the processor's `failure_mode`
//! decides, as it does when the service is too slow.

use wasmgate_sdk::calls::{self, Handle};
use wasmgate_sdk::json::{self, Json};
use wasmgate_sdk::{respond, Action, CallError, CallRequest, CallResponse, Response};

pub struct Guard {
    url: String,
    categories: Vec<String>,
    block: Response,
    pending: Option<Handle>,
}

impl Guard {
    /// Reads a guard's config; `answer` names its response under `response`, with `default` when absent.
    pub fn from_config(config: &[u8], answer: &str, default: Response) -> Result<Guard, String> {
        let config = json::parse(config).map_err(|e| format!("config is not JSON: {e}"))?;
        let mut guard = Guard { url: String::new(), categories: Vec::new(), block: default, pending: None };
        for (key, value) in config.as_object().ok_or("config must be an object")? {
            match key.as_str() {
                "moderation_url" => {
                    let url = value.as_str().ok_or("moderation_url: must be a string")?;
                    if !(url.starts_with("http://") || url.starts_with("https://")) {
                        return Err(format!("moderation_url: {url:?} is not an http or https URL"));
                    }
                    guard.url = url.to_owned();
                }
                "categories" => {
                    let names = value.as_array().ok_or("categories: must be a list")?;
                    for (i, name) in names.iter().enumerate() {
                        let name = name.as_str().ok_or(format!("categories[{i}]: must be a string"))?;
                        guard.categories.push(name.to_owned());
                    }
                }
                "response" => {
                    for (name, response) in value.as_object().ok_or("response: must be an object")? {
                        if name != answer {
                            return Err(format!("response.{name}: unknown key (expected {answer})"));
                        }
                        guard.block = Response::from_config(response, &format!("response.{name}"))?;
                    }
                }
                other => return Err(format!("{other}: unknown key (expected moderation_url, categories or response)")),
            }
        }
        if guard.url.is_empty() {
            return Err("moderation_url: required".into());
        }
        Ok(guard)
    }

    /// Sends `text` to the moderation service and pauses for the verdict; nothing to check goes on.
    pub fn moderate(&mut self, text: &str) -> Action {
        if text.is_empty() {
            return Action::Continue;
        }
        let input = Json::Object(vec![("input".into(), text.into())]).to_string();
        let check = CallRequest::post(&self.url).header("content-type", "application/json").body(input);
        match calls::start(&check) {
            Ok(handle) => {
                self.pending = Some(handle);
                Action::Pause
            }
            Err(reason) => panic!("cannot call the moderation service: {reason}"),
        }
    }

    /// Acts on the verdict, in the processor's `on_resume`: the block response, or continue.
    pub fn on_resume(&mut self) -> Action {
        let verdict = self.pending.take().expect("moderate started a check").result();
        self.act_on(verdict)
    }

    fn act_on(&self, verdict: Result<CallResponse, CallError>) -> Action {
        let answer = match verdict {
            Ok(answer) if answer.status == 200 => answer,
            Ok(answer) => panic!("the moderation service at {} answered {}", self.url, answer.status),
            Err(error) => panic!("the moderation service at {} failed: {error:?}", self.url),
        };
        let verdict = json::parse(&answer.body).unwrap_or_else(|e| panic!("the moderation answer is not JSON: {e}"));
        let results = verdict.get("results").and_then(Json::as_array).unwrap_or_default();
        if results.iter().any(|result| self.flags(result)) {
            respond(self.block.clone())
        } else {
            Action::Continue
        }
    }

    fn flags(&self, result: &Json) -> bool {
        if self.categories.is_empty() {
            return result.get("flagged").and_then(Json::as_bool).unwrap_or(false);
        }
        let categories = result.get("categories");
        self.categories.iter().any(|name| categories.and_then(|c| c.get(name)).and_then(Json::as_bool) == Some(true))
    }
}

/// The text of `messages[*].content` whose role is `role` (strings, or text parts), one per line.
pub fn message_text(messages: Option<&Json>, role: &str) -> String {
    let mut text = String::new();
    for message in messages.and_then(Json::as_array).unwrap_or_default() {
        if message.get("role").and_then(Json::as_str) != Some(role) {
            continue;
        }
        let parts = match message.get("content") {
            Some(Json::String(content)) => vec![content.as_str()],
            Some(Json::Array(parts)) => parts.iter().filter_map(|p| p.get("text").and_then(Json::as_str)).collect(),
            _ => Vec::new(),
        };
        for part in parts {
            if !text.is_empty() {
                text.push('\n');
            }
            text.push_str(part);
        }
    }
    text
}
