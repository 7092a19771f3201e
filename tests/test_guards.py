"""prompt-guard and response-guard through the gateway, with the mock OpenAI
upstream and the mock moderation service on loopback."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from wasmgate.config import parse_config
from wasmgate.mocks import moderation, openai
from wasmgate.runtime import ProcessorFailure
from wasmgate.server import listen, start_gateway

from .conftest import MODULES, make_processor, module_bytes

BLOCKED = {"error": "Unauthorized", "message": "Request prompt blocked by content policy."}

Gateway = Callable[..., Awaitable[str]]


def _url(runner: web.AppRunner) -> str:
    host, port = runner.addresses[0][:2]
    return f"http://{host}:{port}"


class Upstream:
    """The mock OpenAI upstream, counting what reaches it."""

    def __init__(self) -> None:
        self.requests = 0
        self.app = openai.make_app("model")

        @web.middleware
        async def count(request: web.Request, handler: Any) -> web.StreamResponse:
            self.requests += 1
            return await handler(request)

        self.app.middlewares.append(count)


@pytest.fixture
async def upstream() -> Upstream:
    return Upstream()


@pytest.fixture
async def gateway(runtime, upstream) -> AsyncIterator[Gateway]:
    runners = [
        await listen(upstream.app, "127.0.0.1:0"),
        await listen(moderation.make_app(), "127.0.0.1:0"),
    ]
    upstream_url, moderation_origin = _url(runners[0]), _url(runners[1])

    async def start(guard: str, moderation_at: str | None = None, config: Any = None, **settings: Any) -> str:
        """A gateway with ``guard`` on the chat route; ``config`` adds to the guard's config."""
        origin = moderation_at or moderation_origin
        processor = {
            "name": "guard",
            "module": guard,
            "body": "buffer",
            "config": {
                "moderation_url": f"{origin}/v1/moderations",
                "categories": ["violence", "harm"],
                **(config or {}),
            },
            "subrequests": {"allow": [origin], "timeout": "1s"},
            "timeouts": {"request_body": "2s", "response_body": "2s"},
            **settings,
        }
        gateway_config = {
            "listen": "127.0.0.1:0",
            "module_dirs": [str(MODULES)],
            "processors": [processor],
            "routes": [{"name": "chat", "upstream": upstream_url, "processors": ["guard"]}],
        }
        runners.append(await start_gateway(parse_config(gateway_config), runtime))
        return f"{_url(runners[-1])}/v1/chat/completions"

    yield start
    for runner in reversed(runners):
        await runner.cleanup()


def chat(prompt: str) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "system", "content": "be nice"}, {"role": "user", "content": prompt}]}


async def post(url: str, prompt: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as client, client.post(url, json=chat(prompt)) as response:
        return response.status, await response.json()


async def test_a_flagged_prompt_gets_the_configured_answer_and_never_reaches_the_upstream(gateway, upstream):
    url = await gateway("prompt-guard")
    status, body = await post(url, "how do I build a bomb")
    assert (status, body) == (403, BLOCKED)
    assert upstream.requests == 0


async def test_a_clean_prompt_goes_through(gateway, upstream):
    url = await gateway("prompt-guard")
    status, body = await post(url, "how do I bake bread")
    assert status == 200
    assert body["choices"][0]["message"]["content"] == "model heard: how do I bake bread"
    assert upstream.requests == 1


async def test_a_flagged_category_not_configured_is_let_through(gateway):
    url = await gateway("prompt-guard")
    status, _ = await post(url, "something explicit")  # sexual: flagged, but only violence and harm block
    assert status == 200


async def test_the_configured_unauthorized_response_is_used(gateway):
    answer = {"status": 451, "headers": {"x-blocked": "yes"}, "body": "not here"}
    url = await gateway("prompt-guard", config={"response": {"unauthorized": answer}})
    async with aiohttp.ClientSession() as client, client.post(url, json=chat("attack now")) as response:
        assert (response.status, response.headers["x-blocked"], await response.text()) == (451, "yes", "not here")


async def test_a_hanging_classifier_fails_closed_within_the_phase_deadline(gateway, upstream):
    with socket.socket() as silent:  # accepts connections (backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        origin = f"http://127.0.0.1:{silent.getsockname()[1]}"
        url = await gateway("prompt-guard", moderation_at=origin, timeouts={"request_body": "300ms"})
        started = time.monotonic()
        status, body = await post(url, "hello")
        elapsed = time.monotonic() - started
    assert (status, body["error"]["cause"], body["error"]["processor"]) == (503, "timeout", "guard")
    assert elapsed < 1.5
    assert upstream.requests == 0


async def test_a_hanging_classifier_with_fail_open_lets_the_prompt_through(gateway, upstream):
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        origin = f"http://127.0.0.1:{silent.getsockname()[1]}"
        url = await gateway(
            "prompt-guard", moderation_at=origin, timeouts={"request_body": "300ms"}, failure_mode="fail_open"
        )
        status, _ = await post(url, "hello")
    assert status == 200
    assert upstream.requests == 1


async def test_a_classifier_that_errors_fails_the_processor_by_its_failure_mode(gateway, upstream):
    async def broken(_: web.Request) -> web.Response:
        return web.Response(status=500, text="down")

    app = web.Application()
    app.router.add_post("/v1/moderations", broken)
    runner = await listen(app, "127.0.0.1:0")
    try:
        url = await gateway("prompt-guard", moderation_at=_url(runner))
        status, body = await post(url, "hello")
    finally:
        await runner.cleanup()
    assert (status, body["error"]["cause"]) == (503, "trap")
    assert upstream.requests == 0


async def test_a_flagged_completion_is_replaced_by_the_forbidden_answer(gateway, upstream):
    url = await gateway("response-guard")
    status, body = await post(url, "say attack")  # the mock model repeats the prompt
    assert (status, body) == (403, {"error": "Forbidden", "message": "Response blocked by content policy."})
    assert upstream.requests == 1


async def test_a_clean_completion_reaches_the_client(gateway):
    url = await gateway("response-guard")
    status, body = await post(url, "say hello")
    assert status == 200
    assert body["choices"][0]["message"]["content"] == "model heard: say hello"


def test_a_guard_without_a_moderation_url_is_refused_at_load(runtime):
    with pytest.raises(ProcessorFailure, match="moderation_url: required"):
        make_processor(runtime, module_bytes("prompt-guard"), config={"categories": ["violence"]})


def test_the_mock_moderation_service_answers_in_the_openai_shape():
    result = moderation.classify("I will attack")
    assert result["flagged"] is True
    assert result["categories"]["violence"] is True
    assert json.loads(json.dumps(result))["category_scores"]["violence"] == 0.99
