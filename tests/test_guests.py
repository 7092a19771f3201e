"""The example processors (Rust, built from guests/), driven through a chain."""

from __future__ import annotations

import json

import pytest
from multidict import CIMultiDict
from prometheus_client import REGISTRY

from wasmgate.config import ConfigError, metric_namespace, parse_config
from wasmgate.gateway import load_processors
from wasmgate.runtime import Cause, ProcessorFailure

from .conftest import MODULES, drive, make_processor, module_bytes


def chat(content: str, model: str = "model-a") -> bytes:
    return json.dumps({"model": model, "messages": [{"role": "user", "content": content}]}).encode()


def sent_prompt(body: bytes) -> str:
    return json.loads(body)["messages"][0]["content"]


# -- pii-redact ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def pii(runtime):
    return make_processor(runtime, module_bytes("pii-redact"), body="buffer")


async def test_pii_redact_replaces_emails_phones_and_cards_in_chat_messages(runtime, pii):
    prompt = "Mail jane.doe@example.com, call +1 415 555 0100, card 4111 1111 1111 1111."
    driven = await drive(runtime, [pii], body=chat(prompt))
    assert sent_prompt(driven.upstream_body) == "Mail [REDACTED:EMAIL], call [REDACTED:PHONE], card [REDACTED:CARD]."


async def test_pii_redact_leaves_a_card_number_that_fails_the_luhn_check(runtime, pii):
    driven = await drive(runtime, [pii], body=chat("ticket 4111 1111 1111 1112"))
    assert sent_prompt(driven.upstream_body) == "ticket 4111 1111 1111 1112"


async def test_pii_redact_changes_only_string_values_and_keeps_the_rest_of_the_json(runtime, pii):
    body = json.dumps({"model": "a@b.example.com", "temperature": 0.5, "messages": []}).encode()
    driven = await drive(runtime, [pii], body=body)
    assert json.loads(driven.upstream_body) == {"model": "[REDACTED:EMAIL]", "temperature": 0.5, "messages": []}


async def test_pii_redact_counts_what_it_redacted_in_its_metric(runtime, pii):
    def redacted(kind: str) -> float:
        labels = {"processor": pii.name, "kind": kind}
        name = f"wasmgate_guest_{metric_namespace(pii.name)}_pii_redactions_total"
        return REGISTRY.get_sample_value(name, labels) or 0.0

    before = redacted("email"), redacted("card")
    await drive(runtime, [pii], body=chat("a@example.com and b@example.org"))
    assert (redacted("email"), redacted("card")) == (before[0] + 2, before[1])


def test_pii_redact_rejects_an_unknown_kind_in_its_config(runtime):
    with pytest.raises(ProcessorFailure, match="not one of") as raised:
        make_processor(runtime, module_bytes("pii-redact"), config={"kinds": ["email", "ssn"]})
    assert raised.value.cause is Cause.INIT_FAILED


# -- header-inject ------------------------------------------------------------------


async def test_header_inject_adds_and_removes_headers_both_ways(runtime):
    config = {
        "request": {"add": {"x-gateway": "wasmgate"}, "remove": ["x-secret"]},
        "response": {"add": {"x-served-by": "wasmgate"}, "remove": ["server"]},
    }
    inject = make_processor(runtime, module_bytes("header-inject"), config=config)
    driven = await drive(
        runtime,
        [inject],
        headers={"x-secret": "token", "x-kept": "1"},
        upstream_response=(200, {"server": "upstream/1.0", "content-type": "text/plain"}, b"ok"),
    )
    assert driven.upstream_headers["x-gateway"] == "wasmgate"
    assert "x-secret" not in driven.upstream_headers
    assert driven.upstream_headers["x-kept"] == "1"
    assert driven.headers["x-served-by"] == "wasmgate"
    assert "server" not in driven.headers


async def test_header_inject_keeps_repeated_headers_it_does_not_touch(runtime):
    inject = make_processor(runtime, module_bytes("header-inject"), config={"request": {"add": {"x-a": "1"}}})
    repeated = CIMultiDict([("accept", "text/plain"), ("accept", "application/json")])
    driven = await drive(runtime, [inject], headers=repeated)
    assert driven.upstream_headers.getall("accept") == ["text/plain", "application/json"]


def test_header_inject_names_a_bad_key_in_its_config(runtime):
    with pytest.raises(ProcessorFailure, match=r"request\.adds: unknown key"):
        make_processor(runtime, module_bytes("header-inject"), config={"request": {"adds": {}}})


# -- body-router --------------------------------------------------------------------


@pytest.fixture(scope="module")
def router(runtime):
    config = {"routes": {"model-a": "http://a.test", "model-b": "http://b.test"}, "default": "http://default.test"}
    upstreams = ["http://a.test", "http://b.test", "http://default.test"]
    return make_processor(runtime, module_bytes("body-router"), body="buffer", config=config, upstreams=upstreams)


async def test_body_router_sends_the_request_to_the_upstream_its_model_maps_to(runtime, router):
    driven = await drive(runtime, [router], body=chat("hi", model="model-b"))
    assert driven.upstream == "http://b.test"
    assert driven.upstream_headers["x-gateway-model-name"] == "model-b"


async def test_body_router_sends_an_unknown_model_to_the_default(runtime, router):
    driven = await drive(runtime, [router], body=chat("hi", model="model-z"))
    assert driven.upstream == "http://default.test"


async def test_body_router_answers_a_body_that_is_not_json_with_400(runtime, router):
    driven = await drive(runtime, [router], body=b"{not json")
    assert not driven.reached_upstream
    assert driven.status == 400
    assert json.loads(driven.body)["error"]["type"] == "invalid_request_error"


def test_body_router_refuses_an_upstream_that_is_not_a_url(runtime):
    with pytest.raises(ProcessorFailure, match="not an http or https URL"):
        make_processor(runtime, module_bytes("body-router"), config={"routes": {"m": "ftp://x"}})


# -- a chain of them ----------------------------------------------------------------


async def test_the_router_sees_the_model_before_pii_redact_changes_the_body(runtime, router, pii):
    driven = await drive(runtime, [router, pii], body=chat("I am x@example.com", model="model-a"))
    assert driven.upstream == "http://a.test"
    assert sent_prompt(driven.upstream_body) == "I am [REDACTED:EMAIL]"


def test_a_guests_config_error_is_reported_with_the_config_key_when_loading(runtime):
    config = parse_config(
        {
            "module_dirs": [str(MODULES)],
            "processors": [{"name": "inject", "module": "header-inject", "config": {"reply": {}}}],
        }
    )
    with pytest.raises(ConfigError) as raised:
        load_processors(runtime, config)
    assert raised.value.problems == [
        "processors[0].config: init of header-inject failed: "
        "init_failed: reply: unknown key (expected request or response)"
    ]


def test_token_ratelimit_names_a_bad_window_in_its_config(runtime):
    config = {"limits": [{"name": "l", "tokens": 10, "window": "soon"}], "counter": {"header": "x-user-id"}}
    with pytest.raises(ProcessorFailure, match=r"limits\[0\]\.window: \"soon\" is not a duration"):
        make_processor(runtime, module_bytes("token-ratelimit"), config=config)


def test_token_ratelimit_needs_a_counter_header(runtime):
    config = {"limits": [{"name": "l", "tokens": 10, "window": "1h"}]}
    with pytest.raises(ProcessorFailure, match=r"counter\.header: required"):
        make_processor(runtime, module_bytes("token-ratelimit"), config=config)
