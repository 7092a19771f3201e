//! Blocks chat requests whose user prompt a moderation service flags, before
//! they reach the model. Give it `body: buffer`, and `subrequests.allow` for
//! the moderation service; see the `moderation` crate for its config. The
//! block response is `response.unauthorized` (403 by default).

use moderation::{message_text, Guard};
use wasmgate_sdk::json;
use wasmgate_sdk::{Action, Phases, Processor, Response};

#[derive(Default)]
struct PromptGuard {
    guard: Option<Guard>,
}

impl PromptGuard {
    fn guard(&mut self) -> &mut Guard {
        self.guard.as_mut().expect("init ran")
    }
}

impl Processor for PromptGuard {
    fn init(&mut self, config: &[u8]) -> Result<Phases, String> {
        let default = Response::new(403)
            .header("content-type", "application/json")
            .body(r#"{"error":"Unauthorized","message":"Request prompt blocked by content policy."}"#);
        self.guard = Some(Guard::from_config(config, "unauthorized", default)?);
        Ok(Phases::REQUEST_BODY)
    }

    fn on_request_body(&mut self, body: &[u8], _end_of_stream: bool) -> Action {
        let Ok(request) = json::parse(body) else {
            return Action::Continue; // not a chat request: nothing to moderate
        };
        let prompt = message_text(request.get("messages"), "user");
        self.guard().moderate(&prompt)
    }

    fn on_resume(&mut self) -> Action {
        self.guard().on_resume()
    }
}

wasmgate_sdk::register!(PromptGuard);
