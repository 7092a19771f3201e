//! Blocks chat completions whose assistant answer a moderation service
//! flags, before they reach the client. Give it `body: buffer` (it reads
//! whole, non-streamed responses), and `subrequests.allow` for the moderation
//! service; see the `moderation` crate for its config. The block response is
//! `response.forbidden` (403 by default, as Kuadrant's `LLMResponseRiskCheckPolicy`).

use moderation::{message_text, Guard};
use wasmgate_sdk::calls::Handle;
use wasmgate_sdk::json::{self, Json};
use wasmgate_sdk::{response, Action, Phases, Processor, Response};

#[derive(Default)]
struct ResponseGuard {
    guard: Option<Guard>,
    pending: Option<Handle>,
}

impl Processor for ResponseGuard {
    fn init(&mut self, config: &[u8]) -> Result<Phases, String> {
        let default = Response::new(403)
            .header("content-type", "application/json")
            .body(r#"{"error":"Forbidden","message":"Response blocked by content policy."}"#);
        self.guard = Some(Guard::from_config(config, "forbidden", default)?);
        Ok(Phases::RESPONSE_BODY)
    }

    fn on_response_body(&mut self, body: &[u8], _end_of_stream: bool) -> Action {
        if response::status() != 200 {
            return Action::Continue;
        }
        let Ok(completion) = json::parse(body) else {
            return Action::Continue; // not a chat completion: nothing to moderate
        };
        let choices = completion.get("choices").and_then(Json::as_array).unwrap_or_default();
        let messages = Json::Array(choices.iter().filter_map(|c| c.get("message")).cloned().collect());
        let answer = message_text(Some(&messages), "assistant");
        if answer.is_empty() {
            return Action::Continue;
        }
        match self.guard.as_ref().expect("init ran").check(&answer) {
            Ok(handle) => {
                self.pending = Some(handle);
                Action::Pause
            }
            Err(reason) => panic!("cannot call the moderation service: {reason}"),
        }
    }

    fn on_resume(&mut self) -> Action {
        let verdict = self.pending.take().expect("a check was started").result();
        self.guard.as_ref().expect("init ran").act_on(verdict)
    }
}

wasmgate_sdk::register!(ResponseGuard);
