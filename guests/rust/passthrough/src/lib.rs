//! Changes nothing: the baseline for the sandbox's per-request cost
//! (bench/runtime.py) and for the cost of one phase in a chain
//! (bench/gateway.py), and a template for new processors.
//!
//! Config (optional): `{"phases": ["request_headers", "response_body", ...]}`
//! chooses the phases it asks for; every phase by default.

use wasmgate_sdk::json;
use wasmgate_sdk::{Phases, Processor};

const NAMES: [(&str, Phases); 5] = [
    ("request_headers", Phases::REQUEST_HEADERS),
    ("request_body", Phases::REQUEST_BODY),
    ("response_headers", Phases::RESPONSE_HEADERS),
    ("response_body", Phases::RESPONSE_BODY),
    ("done", Phases::DONE),
];

#[derive(Default)]
struct Passthrough;

impl Processor for Passthrough {
    fn init(&mut self, config: &[u8]) -> Result<Phases, String> {
        let config = json::parse(config).map_err(|e| format!("config is not JSON: {e}"))?;
        let Some(names) = config.get("phases") else {
            return Ok(Phases::ALL);
        };
        let names = names.as_array().ok_or("phases: must be a list")?;
        let mut phases = Phases::NONE;
        for name in names {
            let phase = NAMES.iter().find(|(n, _)| Some(*n) == name.as_str()).map(|(_, p)| *p);
            phases |= phase.ok_or_else(|| format!("phases: {name} is not a phase"))?;
        }
        Ok(phases)
    }
}

wasmgate_sdk::register!(Passthrough);
