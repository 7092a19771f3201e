//! Adds and removes request and response headers, as its config says:
//!
//! ```json
//! {"request":  {"add": {"x-name": "value"}, "remove": ["x-other"]},
//!  "response": {"add": {"x-name": "value"}, "remove": ["server"]}}
//! ```
//!
//! `add` replaces any value already there. Only the phases the config needs
//! are asked for.

use wasmgate_sdk::json::{self, Json};
use wasmgate_sdk::{request, response, Action, Phases, Processor};

#[derive(Default)]
struct HeaderInject {
    request: Edits,
    response: Edits,
}

#[derive(Default)]
struct Edits {
    add: Vec<(String, String)>,
    remove: Vec<String>,
}

impl Edits {
    fn from_config(config: &Json, section: &str) -> Result<Edits, String> {
        let Some(value) = config.get(section) else {
            return Ok(Edits::default());
        };
        let members = value.as_object().ok_or(format!("{section}: must be an object"))?;
        let mut edits = Edits::default();
        for (key, value) in members {
            match key.as_str() {
                "add" => {
                    let headers = value.as_object().ok_or(format!("{section}.add: must be an object"))?;
                    for (name, value) in headers {
                        let value = value.as_str().ok_or(format!("{section}.add.{name}: must be a string"))?;
                        edits.add.push((name.clone(), value.to_owned()));
                    }
                }
                "remove" => {
                    let names = value.as_array().ok_or(format!("{section}.remove: must be a list"))?;
                    for (i, name) in names.iter().enumerate() {
                        let name = name.as_str().ok_or(format!("{section}.remove[{i}]: must be a string"))?;
                        edits.remove.push(name.to_owned());
                    }
                }
                other => return Err(format!("{section}.{other}: unknown key (expected add or remove)")),
            }
        }
        Ok(edits)
    }

    fn is_empty(&self) -> bool {
        self.add.is_empty() && self.remove.is_empty()
    }

    fn apply(&self, set: fn(&str, &str), remove: fn(&str)) {
        self.remove.iter().for_each(|name| remove(name));
        self.add.iter().for_each(|(name, value)| set(name, value));
    }
}

impl Processor for HeaderInject {
    fn init(&mut self, config: &[u8]) -> Result<Phases, String> {
        let config = json::parse(config).map_err(|e| format!("config is not JSON: {e}"))?;
        let members = config.as_object().ok_or("config must be an object")?;
        if let Some((other, _)) = members.iter().find(|(k, _)| k != "request" && k != "response") {
            return Err(format!("{other}: unknown key (expected request or response)"));
        }
        self.request = Edits::from_config(&config, "request")?;
        self.response = Edits::from_config(&config, "response")?;
        let mut phases = Phases::NONE;
        if !self.request.is_empty() {
            phases |= Phases::REQUEST_HEADERS;
        }
        if !self.response.is_empty() {
            phases |= Phases::RESPONSE_HEADERS;
        }
        Ok(phases)
    }

    fn on_request_headers(&mut self, _end_of_stream: bool) -> Action {
        self.request.apply(request::set_header, request::remove_header);
        Action::Continue
    }

    fn on_response_headers(&mut self, _end_of_stream: bool) -> Action {
        self.response.apply(response::set_header, response::remove_header);
        Action::Continue
    }
}

wasmgate_sdk::register!(HeaderInject);
