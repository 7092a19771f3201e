"""How a chain runs: ordering, local responses, failure modes and phases."""

from __future__ import annotations

import json

from prometheus_client import REGISTRY

from .conftest import drive, make_processor
from .wat import CONTINUE, guest, header_setter

# Appends this processor's tag to `x-trail` on the request and on the response.
TRAIL = "i32.const {message} {{s:trail}} {{s:tag}} call $add-header i32.const 0"
RESPOND_403 = "i32.const 403 {h:json} {s:blocked} call $send-response i32.const 1"


def tagging(runtime, tag: str, **parts):
    wasm = guest(
        request_headers=TRAIL.format(message=0),
        response_headers=TRAIL.format(message=1),
        strings={"trail": "x-trail", "tag": tag},
        **parts,
    )
    return make_processor(runtime, wasm, name=f"tag-{tag}")


def responder(runtime, name: str = "guard"):
    wasm = guest(
        request_headers=RESPOND_403,
        strings={"blocked": "blocked"},
        headers={"json": [("content-type", "application/json")]},
    )
    return make_processor(runtime, wasm, name=name)


async def test_request_hooks_run_in_route_order_and_response_hooks_in_reverse(runtime):
    chain = [tagging(runtime, "a"), tagging(runtime, "b"), tagging(runtime, "c")]
    driven = await drive(runtime, chain)
    assert driven.upstream_headers.getall("x-trail") == ["a", "b", "c"]
    assert driven.headers.getall("x-trail") == ["c", "b", "a"]


async def test_a_local_response_skips_the_upstream_and_later_processors(runtime):
    first, later = tagging(runtime, "a"), tagging(runtime, "z")
    driven = await drive(runtime, [first, responder(runtime), later])
    assert not driven.reached_upstream
    assert (driven.status, driven.body) == (403, b"blocked")
    assert driven.headers["content-type"] == "application/json"
    assert driven.outcomes[later.name].result == "skipped"  # not even its done hook ran


async def test_processors_before_a_local_response_see_it_on_the_response_path(runtime):
    driven = await drive(runtime, [tagging(runtime, "a"), responder(runtime)])
    assert driven.headers.getall("x-trail") == ["a"]


async def test_fail_closed_answers_503_naming_the_processor_phase_and_cause(runtime):
    broken = make_processor(runtime, guest(request_headers="unreachable"), name="broken")
    driven = await drive(runtime, [broken])
    assert driven.status == 503
    assert driven.headers["content-type"] == "application/json"
    error = json.loads(driven.body)["error"]
    assert error["type"] == "processor_failed"
    assert (error["processor"], error["phase"], error["cause"]) == ("broken", "request_headers", "trap")
    assert not driven.reached_upstream


async def test_fail_open_drops_the_failed_hooks_changes_and_goes_on(runtime):
    # Sets a header, then traps: the header must not reach the upstream.
    partial = "i32.const 0 {s:name} {s:value} call $set-header unreachable"
    broken = make_processor(
        runtime, guest(request_headers=partial, strings={"name": "x-half", "value": "done"}), failure_mode="fail_open"
    )
    after = tagging(runtime, "after")
    driven = await drive(runtime, [broken, after])
    assert driven.reached_upstream
    assert "x-half" not in driven.upstream_headers
    assert driven.upstream_headers.getall("x-trail") == ["after"]
    assert driven.outcomes[broken.name].result == "error:trap"


async def test_fail_open_leaves_a_failed_processor_out_of_the_rest_of_the_request(runtime):
    broken = make_processor(
        runtime,
        guest(
            request_headers="unreachable",
            response_headers="i32.const 1 {s:n} {s:v} call $set-header i32.const 0",
            strings={"n": "x-late", "v": "1"},
        ),
        failure_mode="fail_open",
    )
    driven = await drive(runtime, [broken])
    assert "x-late" not in driven.headers


async def test_fallback_answers_with_the_configured_response(runtime):
    broken = make_processor(
        runtime,
        guest(request_body="unreachable"),
        failure_mode="fallback",
        fallback={"status": 429, "headers": {"retry-after": "1"}, "body": "slow down"},
    )
    driven = await drive(runtime, [broken], body=b"hello")
    assert (driven.status, driven.body, driven.headers["retry-after"]) == (429, b"slow down", "1")


async def test_a_body_no_processor_asked_for_passes_untouched(runtime):
    header_only = make_processor(runtime, guest(phases=1, request_body="unreachable", response_body="unreachable"))
    driven = await drive(runtime, [header_only], body=b"payload")
    assert driven.upstream_body == b"payload"
    assert driven.body == b"upstream"


async def test_a_body_hook_replaces_the_body_it_was_given(runtime):
    replacing = make_processor(
        runtime,
        guest(
            request_body="{s:new} call $replace-body i32.const 0",
            response_body="{s:new} call $replace-body i32.const 0",
            strings={"new": "replaced"},
        ),
    )
    driven = await drive(runtime, [replacing], body=b"original")
    assert driven.upstream_body == b"replaced"
    assert driven.body == b"replaced"


async def test_a_response_phase_respond_replaces_the_upstream_response(runtime):
    replace = "i32.const 451 {h:none} {s:b} call $send-response i32.const 1"
    guard = make_processor(
        runtime, guest(response_body=replace, strings={"b": "redacted"}, headers={"none": []}), name="response-guard"
    )
    driven = await drive(runtime, [tagging(runtime, "outer"), guard], body=b"x")
    assert (driven.status, driven.body) == (451, b"redacted")
    # The outer processor saw the replacement response from its start.
    assert driven.headers.getall("x-trail") == ["outer"]


async def test_the_done_hook_runs_after_a_failure_elsewhere(runtime):
    done_marker = make_processor(
        runtime, guest(phases=16, done="i32.const 2 {s:m} call $log", strings={"m": "done ran"}), name="logger"
    )
    broken = make_processor(runtime, guest(request_headers="unreachable"), name="broken-2")
    driven = await drive(runtime, [done_marker, broken])
    assert driven.status == 503
    assert driven.outcomes["logger"].result == "continue"


async def test_a_processor_sees_the_request_body_and_can_still_change_headers_when_buffering(runtime):
    set_after_body = "i32.const 0 {s:n} {s:v} call $set-header " + CONTINUE
    buffering = make_processor(
        runtime, guest(request_body=set_after_body, strings={"n": "x-after-body", "v": "yes"}), body="buffer"
    )
    driven = await drive(runtime, [buffering], body=b"{}")
    assert driven.upstream_headers["x-after-body"] == "yes"


def invocations(processor, phase: str) -> float:
    labels = {"processor": processor.name, "phase": phase}
    return REGISTRY.get_sample_value("wasmgate_processor_invocations_total", labels) or 0.0


async def test_a_processor_is_called_only_in_the_phases_it_asked_for(runtime):
    setter = make_processor(runtime, header_setter("x-seen", "yes"))  # asks for request headers only
    driven = await drive(runtime, [setter], body=b"{}")
    assert driven.upstream_headers["x-seen"] == "yes"
    assert invocations(setter, "request_headers") == 1
    assert [invocations(setter, phase) for phase in ("request_body", "response_headers", "done")] == [0, 0, 0]
