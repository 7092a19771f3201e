//! Blocks chat requests whose user prompt a moderation service flags, before
//! they reach the model. Give it `body: buffer`, and `subrequests.allow` for
//! the moderation service; see the `moderation` crate for its config. The
//! block response is `response.unauthorized` (403 by default).

use moderation::{message_text, Guard};
use wasmgate_sdk::calls::Handle;
use wasmgate_sdk::json;
use wasmgate_sdk::{Action, Phases, Processor, Response};

#[derive(Default)]
struct PromptGuard {
    guard: Option<Guard>,
    pending: Option<Handle>,
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
        if prompt.is_empty() {
            return Action::Continue;
        }
        let guard = self.guard.as_ref().expect("init ran");
        match guard.check(&prompt) {
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

wasmgate_sdk::register!(PromptGuard);
