"""Sub-requests: a processor calls a real service on loopback, pauses, and acts on the answer."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import REGISTRY

from wasmgate.config import parse_config
from wasmgate.server import listen, start_gateway

from .conftest import drive, make_processor
from .wat import guest

CALL_FAILED, ERROR_STATUS = 599, 590
"""The test guest answers 599 when ``call`` returns Err, and 590 + the call-error code when a call failed."""
TIMEOUT, CONNECT, DENIED, TOO_LARGE, CANCELLED = range(5)


def caller(
    url: str, calls: int = 1, method: str = "GET", body: bytes = b"", timeout_ms: int = 0, on_resume: str = ""
) -> bytes:
    """A guest that starts ``calls`` calls in request_headers, pauses, and answers with the first call's outcome.

    ``on_resume`` runs first in on-resume.
    """
    start = "".join(
        f"{{s:method}} {{s:url}} i32.const 0 i32.const 0 {{s:body}} i32.const {timeout_ms} i32.const {512 + 16 * k} "
        "call $call "
        for k in range(calls)
    )
    last = 512 + 16 * (calls - 1)
    request_headers = f"""{start}
        i32.const {last} i32.load8_u
        if (result i32)
          i32.const {CALL_FAILED} i32.const 0 i32.const 0 i32.const {last + 4} i32.load i32.const {last + 8} i32.load
          call $send-response
          i32.const 1
        else
          i32.const 2
        end"""
    resume = f"""{on_resume}
        i32.const 516 i32.load i32.const 768 call $call-result
        i32.const 768 i32.load8_u
        if (result i32)
          i32.const {ERROR_STATUS} i32.const 772 i32.load8_u i32.add
          i32.const 0 i32.const 0 i32.const 0 i32.const 0 call $send-response
          i32.const 1
        else
          i32.const 772 i32.load16_u i32.const 0 i32.const 0 i32.const 784 i32.load i32.const 788 i32.load
          call $send-response
          i32.const 1
        end"""
    return guest(
        phases=1,
        request_headers=request_headers,
        resume=resume,
        strings={"method": method, "url": url, "body": body},
    )


class Service:
    """A real HTTP service on loopback that records what it received."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []
        self.url = ""
        self._flaky: dict[str, int] = {}
        self._slow_waiting = 0
        self.most_slow_waiting = 0
        """The most ``/slow`` requests the service held at once."""

    def app(self) -> web.Application:
        async def record(request: web.Request) -> dict[str, Any]:
            seen = {"path": request.path, "headers": dict(request.headers), "body": await request.text()}
            self.seen.append(seen)
            return seen

        async def echo(request: web.Request) -> web.Response:
            seen = await record(request)
            return web.json_response({"body": seen["body"]}, status=201)

        async def flaky(request: web.Request) -> web.Response:
            await record(request)
            key = request.headers["Idempotency-Key"]
            self._flaky[key] = self._flaky.get(key, 0) + 1
            return web.Response(status=503 if self._flaky[key] <= 2 else 200, text="third time")

        async def slow(request: web.Request) -> web.Response:
            await record(request)
            self._slow_waiting += 1
            self.most_slow_waiting = max(self.most_slow_waiting, self._slow_waiting)
            try:
                await asyncio.sleep(float(request.query.get("s", "0.2")))
            finally:
                self._slow_waiting -= 1
            return web.Response(text="late")

        async def big(request: web.Request) -> web.Response:
            return web.Response(body=b"x" * (2 * 2**20))

        app = web.Application()
        app.router.add_route("*", "/echo", echo)
        app.router.add_get("/flaky", flaky)
        app.router.add_get("/slow", slow)
        app.router.add_get("/big", big)
        return app


@pytest.fixture
async def service() -> AsyncIterator[Service]:
    served = Service()
    runner = web.AppRunner(served.app(), handler_cancellation=True)  # a call cancelled is a handler cancelled
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    served.url = f"http://{host}:{port}"
    yield served
    await runner.cleanup()


def calls_to(service_url: str, **subrequests: Any) -> dict[str, Any]:
    """Processor settings allowing calls to ``service_url``, with room in the phase's deadline to wait."""
    return {"subrequests": {"allow": [service_url], **subrequests}, "timeouts": {"request_headers": "5s"}}


async def test_a_paused_processor_resumes_with_the_calls_answer(runtime, service):
    processor = make_processor(
        runtime, caller(f"{service.url}/echo", method="POST", body=b"is this ok?"), **calls_to(service.url)
    )
    driven = await drive(runtime, [processor])
    assert not driven.reached_upstream
    assert (driven.status, json.loads(driven.body)) == (201, {"body": "is this ok?"})


async def test_calls_carry_an_idempotency_key_an_attempt_number_and_the_depth(runtime, service):
    processor = make_processor(runtime, caller(f"{service.url}/echo"), **calls_to(service.url))
    await drive(runtime, [processor])
    headers = service.seen[0]["headers"]
    assert len(headers["Idempotency-Key"]) == 32
    assert (headers["Wasmgate-Attempt"], headers["Wasmgate-Depth"]) == ("1", "1")


async def test_retries_keep_the_idempotency_key_and_count_attempts(runtime, service):
    processor = make_processor(
        runtime, caller(f"{service.url}/flaky"), **calls_to(service.url, retries=2, backoff="10ms")
    )
    driven = await drive(runtime, [processor])
    assert (driven.status, driven.body) == (200, b"third time")
    attempts = [(seen["headers"]["Idempotency-Key"], seen["headers"]["Wasmgate-Attempt"]) for seen in service.seen]
    key = attempts[0][0]
    assert attempts == [(key, "1"), (key, "2"), (key, "3")]


async def test_the_guest_sees_the_last_answer_when_retries_run_out(runtime, service):
    processor = make_processor(runtime, caller(f"{service.url}/flaky"), **calls_to(service.url, retries=1))
    driven = await drive(runtime, [processor])
    assert driven.status == 503
    assert len(service.seen) == 2


async def test_a_call_to_an_origin_not_allowed_is_denied_without_a_connection(runtime, service):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.setblocking(False)
        port = listener.getsockname()[1]
        processor = make_processor(runtime, caller(f"http://127.0.0.1:{port}/x"), **calls_to(service.url))
        driven = await drive(runtime, [processor])
        with pytest.raises(BlockingIOError):
            listener.accept()  # nobody knocked
    assert driven.status == ERROR_STATUS + DENIED


async def test_a_response_over_max_response_bytes_is_too_large(runtime, service):
    processor = make_processor(
        runtime, caller(f"{service.url}/big"), **calls_to(service.url, max_response_bytes="1MiB")
    )
    assert (await drive(runtime, [processor])).status == ERROR_STATUS + TOO_LARGE


async def test_a_call_past_its_own_timeout_fails_with_timeout(runtime, service):
    processor = make_processor(runtime, caller(f"{service.url}/slow?s=2", timeout_ms=100), **calls_to(service.url))
    assert (await drive(runtime, [processor])).status == ERROR_STATUS + TIMEOUT


async def test_a_refused_connection_fails_with_connect(runtime):
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{unused.getsockname()[1]}"
    processor = make_processor(runtime, caller(f"{closed}/x"), **calls_to(closed))
    assert (await drive(runtime, [processor])).status == ERROR_STATUS + CONNECT


async def test_a_call_hanging_past_the_phase_deadline_fails_closed_and_its_connection_is_closed(runtime):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        origin = f"http://127.0.0.1:{listener.getsockname()[1]}"
        processor = make_processor(
            runtime,
            caller(f"{origin}/hang"),
            **{**calls_to(origin, timeout="10s"), "timeouts": {"request_headers": "300ms"}},
        )
        started = time.monotonic()
        driven = await drive(runtime, [processor])
        elapsed = time.monotonic() - started
        connection, _ = listener.accept()
        with connection:
            connection.settimeout(2)
            while connection.recv(65536):  # the request, then the end of the stream
                pass
    error = json.loads(driven.body)["error"]
    assert (driven.status, error["cause"], error["phase"]) == (503, "timeout", "request_headers")
    assert 0.3 <= elapsed < 1.5


async def test_a_hanging_call_with_fail_open_lets_the_request_through(runtime, service):
    settings = {**calls_to(service.url), "timeouts": {"request_headers": "200ms"}}
    processor = make_processor(runtime, caller(f"{service.url}/slow?s=5"), failure_mode="fail_open", **settings)
    driven = await drive(runtime, [processor])
    assert driven.reached_upstream
    assert driven.outcomes[processor.name].result == "error:timeout"


async def test_starting_more_calls_than_max_concurrent_is_refused_to_the_guest(runtime, service):
    processor = make_processor(
        runtime, caller(f"{service.url}/echo", calls=3), **calls_to(service.url, max_concurrent=2)
    )
    driven = await drive(runtime, [processor])
    assert driven.status == CALL_FAILED
    assert b"max_concurrent" in driven.body


async def test_pausing_with_no_call_started_is_an_abi_violation(runtime):
    processor = make_processor(runtime, guest(phases=1, request_headers="i32.const 2"))
    error = json.loads((await drive(runtime, [processor])).body)["error"]
    assert error["cause"] == "abi_violation"
    assert "nothing to wait for" in error["message"]


async def test_call_responses_count_against_the_memory_quota(runtime, service):
    processor = make_processor(
        runtime,
        caller(f"{service.url}/big"),
        memory_limit="2MiB",
        **calls_to(service.url, max_response_bytes="4MiB"),
    )
    error = json.loads((await drive(runtime, [processor])).body)["error"]
    assert error["cause"] == "memory_limit"


async def test_many_requests_wait_on_calls_without_a_thread_each(runtime, service):
    # 40 requests each wait 300 ms on a call, at once, on one event loop.
    processor = make_processor(runtime, caller(f"{service.url}/slow?s=0.3"), **calls_to(service.url))
    results = await asyncio.gather(*(drive(runtime, [processor]) for _ in range(40)))
    assert [driven.status for driven in results] == [200] * 40
    assert service.most_slow_waiting == 40  # every call waited at once: none queued behind another


async def test_a_request_deeper_than_the_limit_is_refused_with_508(runtime, tmp_path):
    async def upstream(_: web.Request) -> web.Response:
        return web.Response(text="reached")

    app = web.Application()
    app.router.add_get("/{tail:.*}", upstream)
    runners = [await listen(app, "127.0.0.1:0")]
    host, port = runners[0].addresses[0][:2]
    config = {
        "listen": "127.0.0.1:0",
        "max_subrequest_depth": 2,
        "routes": [{"name": "r", "upstream": f"http://{host}:{port}"}],
    }
    runners.append(await start_gateway(parse_config(config), runtime))
    host, port = runners[1].addresses[0][:2]
    try:
        async with aiohttp.ClientSession() as client:
            statuses = []
            for depth in ("2", "3"):
                async with client.get(f"http://{host}:{port}/", headers={"Wasmgate-Depth": depth}) as response:
                    statuses.append(response.status)
    finally:
        for runner in reversed(runners):
            await runner.cleanup()
    assert statuses == [200, 508]


async def test_calls_are_counted_by_origin_and_outcome(runtime, service):
    processor = make_processor(runtime, caller(f"{service.url}/echo"), **calls_to(service.url))
    await drive(runtime, [processor])
    await drive(runtime, [make_processor(runtime, caller("http://elsewhere.test/"), name=processor.name + "x")])
    labels = {"processor": processor.name, "origin": service.url, "outcome": "2xx"}
    assert REGISTRY.get_sample_value("wasmgate_subrequests_total", labels) == 1.0
    denied = {"processor": processor.name + "x", "origin": "(denied)", "outcome": "denied"}
    assert REGISTRY.get_sample_value("wasmgate_subrequests_total", denied) == 1.0
    timed = {"processor": processor.name, "origin": service.url}
    assert REGISTRY.get_sample_value("wasmgate_subrequest_duration_seconds_count", timed) == 1.0


async def test_a_retried_phase_makes_its_calls_again_under_the_same_idempotency_keys(runtime, service):
    trap_on_first_resume = """
        i32.const 900 call $get-checkpoint
        i32.const 900 i32.load8_u i32.eqz
        if i32.const 0 i32.const 1 call $set-checkpoint unreachable end"""
    processor = make_processor(
        runtime, caller(f"{service.url}/echo", on_resume=trap_on_first_resume), phase_retries=1, **calls_to(service.url)
    )
    driven = await drive(runtime, [processor])
    assert driven.status == 201
    keys = [seen["headers"]["Idempotency-Key"] for seen in service.seen]
    assert len(keys) == 2
    assert keys[0] == keys[1]
