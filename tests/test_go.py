"""Go processors (sdk/go, WASI preview 1) in the gateway."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import REGISTRY

from wasmgate.config import metric_namespace
from wasmgate.server import listen
from wasmgate.state import MemoryState

from .conftest import ROOT, drive, make_processor, module_bytes, route


@pytest.fixture(scope="session")
def misbehave(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """The hostile Go fixture, built from tests/go/misbehave."""
    go = shutil.which("go")
    if go is None:
        pytest.fail("Go 1.24 or newer is needed to build the Go test guest")
    out = tmp_path_factory.mktemp("go") / "misbehave.wasm"
    env = {**os.environ, "GOOS": "wasip1", "GOARCH": "wasm", "GOTOOLCHAIN": "local", "GOFLAGS": "-mod=mod"}
    subprocess.run(
        [go, "build", "-buildmode=c-shared", "-o", str(out), "."],
        cwd=ROOT / "tests" / "go" / "misbehave",
        env=env,
        check=True,
        capture_output=True,
        timeout=300,
    )
    return out.read_bytes()


GO = {"memory_limit": "64MiB", "timeouts": {"init": "2s", "request_headers": "300ms"}}
"""Go's runtime wants more room and a longer start than a Rust guest."""


async def test_a_rust_and_a_go_processor_chain_through_the_gateway(start, caplog):
    config = {
        "processors": [
            {"name": "pii", "module": "pii-redact", "body": "buffer"},
            {"name": "go-inject", "module": "header-inject-go", "config": {"request": {"add": {"x-from": "go"}}}, **GO},
        ],
        "routes": [route(processors=["pii", "go-inject"])],
    }
    modules = {name: module_bytes(name) for name in ("pii-redact", "header-inject-go")}
    body = {"messages": [{"role": "user", "content": "I am a@example.com"}]}
    with caplog.at_level(logging.INFO, logger="wasmgate.guest"):
        gateway = await start(config, modules)
        async with aiohttp.ClientSession() as client:
            for _ in range(2):
                async with client.post(f"{gateway}/v1/chat", json=body) as response:
                    echo = await response.json()
                assert echo["headers"]["x-from"] == "go"
                assert json.loads(echo["body"])["messages"][0]["content"] == "I am [REDACTED:EMAIL]"
    lines = [r.getMessage() for r in caplog.records if r.name == "wasmgate.guest"]
    # init ran once, at load: each request's fresh instance starts from the image it left
    assert lines.count("[go-inject] header-inject-go ready: 1 request edits, 0 response edits") == 1


@pytest.mark.parametrize(("how", "cause"), [("panic", "trap"), ("memory", "memory_limit"), ("spin", "timeout")])
async def test_a_go_guest_that_fails_fails_its_request_with_the_cause_and_the_next_succeeds(
    runtime, misbehave, how, cause
):
    processor = make_processor(runtime, misbehave, **GO)
    failed = await drive(runtime, [processor], headers={"x-misbehave": how})
    assert (failed.status, json.loads(failed.body)["error"]["cause"]) == (503, cause)
    assert (await drive(runtime, [processor])).upstream_headers["x-go"] == "ok"


async def test_a_go_panic_reaches_the_log_under_the_processor(runtime, misbehave, caplog):
    processor = make_processor(runtime, misbehave, name="panicky", **GO)
    with caplog.at_level(logging.INFO, logger="wasmgate.guest"):
        await drive(runtime, [processor], headers={"x-misbehave": "panic"})
    assert any(r.getMessage().startswith("[panicky] panic: asked to panic") for r in caplog.records)


def tokens(kind: str, processor: str, model: str) -> float:
    labels = {"processor": processor, "model": model}
    name = f"wasmgate_guest_{metric_namespace(processor)}_llm_{kind}_tokens_total"
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_token_count_reads_a_json_completion_and_adds_headers_when_buffered(runtime):
    processor = make_processor(runtime, module_bytes("token-count"), config={"headers": True}, body="buffer", **GO)
    answer = {"model": "m-1", "choices": [], "usage": {"prompt_tokens": 12, "completion_tokens": 30}}
    driven = await drive(
        runtime,
        [processor],
        upstream_response=(200, {"content-type": "application/json"}, json.dumps(answer).encode()),
    )
    assert (driven.headers["x-tokens-prompt"], driven.headers["x-tokens-completion"]) == ("12", "30")
    assert (tokens("prompt", processor.name, "m-1"), tokens("completion", processor.name, "m-1")) == (12, 30)


async def test_token_count_reads_the_usage_event_of_a_stream(start):
    config = {
        "processors": [{"name": "tokens", "module": "token-count", **GO}],
        "routes": [route(processors=["tokens"])],
    }
    gateway = await start(config, {"token-count": module_bytes("token-count")})
    async with aiohttp.ClientSession() as client, client.get(f"{gateway}/usage-events") as response:
        events = [line async for line in response.content if line.startswith(b"data:")]
    assert len(events) == 4
    assert (tokens("prompt", "tokens", "m-s"), tokens("completion", "tokens", "m-s")) == (7, 3)


async def test_a_go_processor_calls_out_pauses_and_acts_on_the_answer(runtime, misbehave):
    async def answer(request: web.Request) -> web.Response:
        body = await request.read()
        return web.Response(status=202, body=body.upper(), headers={"x-seen-key": request.headers["Idempotency-Key"]})

    app = web.Application()
    app.router.add_post("/check", answer)
    service = await listen(app, "127.0.0.1:0")
    host, port = service.addresses[0][:2]
    origin = f"http://{host}:{port}"
    try:
        processor = make_processor(runtime, misbehave, subrequests={"allow": [origin]}, **GO)
        driven = await drive(runtime, [processor], headers={"x-call-url": f"{origin}/check"})
        denied = await drive(runtime, [processor], headers={"x-call-url": "http://elsewhere.test/check"})
    finally:
        await service.cleanup()
    seen = driven.upstream_headers
    assert (seen["x-call-status"], seen["x-call-body"], len(seen["x-call-key"])) == ("202", "FROM GO", 32)
    assert denied.upstream_headers["x-call-error"] == "denied"


async def test_a_go_processor_counts_in_shared_state(runtime, misbehave):
    memory = MemoryState.create()
    try:
        processor = make_processor(runtime, misbehave, state=memory, **GO)
        seen = []
        for _ in range(3):
            driven = await drive(runtime, [processor], headers={"x-count": "1"})
            seen.append((driven.upstream_headers["x-hits"], driven.upstream_headers["x-last"]))
    finally:
        memory.remove()
    assert seen == [("1 true", "1"), ("2 true", "2"), ("2 false", "2")]
