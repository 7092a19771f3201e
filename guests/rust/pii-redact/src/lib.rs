//! Redacts e-mail addresses, phone numbers and card numbers (Luhn-checked)
//! in request bodies: inside the string values of a JSON body (an
//! OpenAI-style chat request), or in the raw text of any other body.
//!
//! Config (optional): `{"kinds": ["email", "phone", "card"]}`. Give it
//! `body: buffer` in the gateway config so it sees whole bodies.

// Built for the host only to unit-test `redact`; the processor using the rest is wasm-only.
#![cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]

mod redact;

#[cfg(target_arch = "wasm32")]
mod processor {
    use crate::redact::{redact, Kind, Tally};
    use wasmgate_sdk::json;
    use wasmgate_sdk::metrics::Metric;
    use wasmgate_sdk::{request, Action, Phases, Processor};

    static REDACTED: Metric = Metric::counter("pii_redactions_total", "Values redacted, by kind.", &["kind"]);

    struct PiiRedact {
        kinds: Vec<Kind>,
    }

    impl Default for PiiRedact {
        fn default() -> PiiRedact {
            PiiRedact { kinds: Kind::ALL.to_vec() }
        }
    }

    impl PiiRedact {
        /// The redacted body, or None when it has nothing to redact.
        fn redact_body(&self, body: &[u8], tally: &mut Tally) -> Option<Vec<u8>> {
            if let Ok(mut value) = json::parse(body) {
                let mut changed = false;
                value.for_each_string_mut(&mut |s| {
                    if let Some(redacted) = redact(s, &self.kinds, tally) {
                        *s = redacted;
                        changed = true;
                    }
                });
                return changed.then(|| value.to_string().into_bytes());
            }
            let text = core::str::from_utf8(body).ok()?;
            redact(text, &self.kinds, tally).map(String::into_bytes)
        }
    }

    impl Processor for PiiRedact {
        fn init(&mut self, config: &[u8]) -> Result<Phases, String> {
            let config = json::parse(config).map_err(|e| format!("config is not JSON: {e}"))?;
            if let Some(kinds) = config.get("kinds") {
                let kinds = kinds.as_array().ok_or("kinds: must be a list")?;
                self.kinds = kinds
                    .iter()
                    .map(|k| {
                        let name = k.as_str().unwrap_or_default();
                        Kind::ALL
                            .into_iter()
                            .find(|kind| kind.name() == name)
                            .ok_or(format!("kinds: {k} is not one of \"email\", \"phone\", \"card\""))
                    })
                    .collect::<Result<_, _>>()?;
            }
            Ok(Phases::REQUEST_BODY)
        }

        fn on_request_body(&mut self, body: &[u8], _end_of_stream: bool) -> Action {
            let mut tally = Tally::default();
            if let Some(redacted) = self.redact_body(body, &mut tally) {
                request::replace_body(&redacted);
            }
            for kind in Kind::ALL {
                if tally.of(kind) > 0 {
                    REDACTED.record(&[kind.name()], tally.of(kind) as f64);
                }
            }
            Action::Continue
        }
    }

    wasmgate_sdk::register!(PiiRedact);
}
