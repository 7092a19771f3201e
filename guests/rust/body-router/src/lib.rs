//! Body-based routing, as the Gateway API Inference Extension does it:
//! reads `model` from the JSON request body, sends the request to the
//! upstream its config maps that model to, and sets `x-gateway-model-name`.
//!
//! Config: `{"routes": {"model-a": "http://...", "model-b": "http://..."}, "default": "http://..."}`.
//! A model not in `routes` goes to `default`, or stays on the route's own
//! upstream when there is none. Give it `body: buffer` in the gateway config.

use wasmgate_sdk::json::{self, Json};
use wasmgate_sdk::{request, respond, Action, Phases, Processor, Response};

#[derive(Default)]
struct BodyRouter {
    routes: Vec<(String, String)>,
    default: Option<String>,
}

fn upstream(value: &Json, key: &str) -> Result<String, String> {
    let url = value.as_str().ok_or(format!("{key}: must be a string"))?;
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(format!("{key}: {url:?} is not an http or https URL"));
    }
    Ok(url.to_owned())
}

fn invalid_request(message: &str) -> Action {
    let error = Json::Object(vec![(
        "error".into(),
        Json::Object(vec![("message".into(), message.into()), ("type".into(), "invalid_request_error".into())]),
    )]);
    respond(Response::new(400).header("content-type", "application/json").body(error.to_string()))
}

impl Processor for BodyRouter {
    fn init(&mut self, config: &[u8]) -> Result<Phases, String> {
        let config = json::parse(config).map_err(|e| format!("config is not JSON: {e}"))?;
        let members = config.as_object().ok_or("config must be an object")?;
        for (key, value) in members {
            match key.as_str() {
                "routes" => {
                    let routes = value.as_object().ok_or("routes: must be an object of model: URL")?;
                    for (model, url) in routes {
                        self.routes.push((model.clone(), upstream(url, &format!("routes.{model}"))?));
                    }
                }
                "default" => self.default = Some(upstream(value, "default")?),
                other => return Err(format!("{other}: unknown key (expected routes or default)")),
            }
        }
        Ok(Phases::REQUEST_BODY)
    }

    fn on_request_body(&mut self, body: &[u8], _end_of_stream: bool) -> Action {
        let request = match json::parse(body) {
            Ok(request) => request,
            Err(error) => return invalid_request(&format!("the request body is not valid JSON: {error}")),
        };
        let model = request.get("model").and_then(Json::as_str);
        if let Some(model) = model {
            request::set_header("x-gateway-model-name", model);
        }
        let routed = model.and_then(|m| self.routes.iter().find(|(name, _)| name == m)).map(|(_, url)| url);
        if let Some(url) = routed.or(self.default.as_ref()) {
            if let Err(reason) = request::set_upstream(url) {
                wasmgate_sdk::error!("cannot route to {url}: {reason}");
            }
        }
        Action::Continue
    }
}

wasmgate_sdk::register!(BodyRouter);
