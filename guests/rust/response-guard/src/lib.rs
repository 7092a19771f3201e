//! Blocks chat completions whose assistant answer a moderation service
//! flags, before they reach the client. Give it `body: buffer` (it reads
//! whole, non-streamed responses), and `subrequests.allow` for the moderation
//! service; see the `moderation` crate for its config. The block response is
//! `response.forbidden` (403 by default, as Kuadrant's `LLMResponseRiskCheckPolicy`).

use moderation::{message_text, Guard};
use wasmgate_sdk::json::{self, Json};
use wasmgate_sdk::{response, Action, Phases, Processor, Response};

#[derive(Default)]
struct ResponseGuard {
    guard: Option<Guard>,
}

impl ResponseGuard {
    fn guard(&mut self) -> &mut Guard {
        self.guard.as_mut().expect("init ran")
    }
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
        self.guard().moderate(&answer)
    }

    fn on_resume(&mut self) -> Action {
        self.guard().on_resume()
    }
}

wasmgate_sdk::register!(ResponseGuard);
