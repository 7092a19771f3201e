"""``wasmgate demo``: the example processors at work, on this machine, now.

Starts two mock OpenAI-compatible upstreams and a gateway running the
bundled config (``demo.yaml``) on loopback, sends a handful of requests that
show each processor at work, prints what happened, and exits 0 when every
step behaved as it should.
"""

from __future__ import annotations

import asyncio
import string
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from aiohttp import web

from .config import Config, parse_config
from .mocks import moderation, openai
from .runtime import Runtime
from .server import listen, start_gateway
from .sources import SHIPPED

PACKAGE = Path(__file__).resolve().parent


@dataclass
class Step:
    title: str
    expected: str
    observed: str = ""
    ok: bool = False


def _say(message: str) -> None:
    print(f"  .. {message}", flush=True)


def _address(runner: web.AppRunner) -> str:
    host, port = runner.addresses[0][:2]
    return f"http://{host}:{port}"


def demo_config(upstream_a: str, upstream_b: str, moderation: str) -> Config:
    text = string.Template((PACKAGE / "demo.yaml").read_text())
    filled = text.substitute(UPSTREAM_A=upstream_a, UPSTREAM_B=upstream_b, MODERATION=moderation)
    return parse_config(yaml.safe_load(filled), "demo.yaml")


def _chat(content: str, model: str = "model-a", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": content}], **extra}


async def _steps(session: aiohttp.ClientSession, gateway: str) -> list[Step]:
    url = f"{gateway}/v1/chat/completions"
    steps = []

    async def step(title: str, expected: str, check: Callable[[], Awaitable[tuple[bool, str]]]) -> None:
        _say(title)
        item = Step(title, expected)
        try:
            item.ok, item.observed = await check()
        except (aiohttp.ClientError, ValueError, KeyError) as error:
            item.observed = f"failed: {error!r}"
        steps.append(item)

    async def redaction() -> tuple[bool, str]:
        prompt = "Mail jane.doe@example.com or call +1 415 555 0100 about card 4111 1111 1111 1111"
        async with session.post(url, json=_chat(prompt)) as response:
            sent = (await response.json())["echo"]["body"]["messages"][0]["content"]
        ok = all(tag in sent for tag in ("[REDACTED:EMAIL]", "[REDACTED:PHONE]", "[REDACTED:CARD]"))
        return ok and "jane.doe" not in sent, f"upstream got: {sent!r}"

    async def injection() -> tuple[bool, str]:
        async with session.post(url, json=_chat("hello")) as response:
            seen = (await response.json())["echo"]["headers"].get("x-gateway")
            added = response.headers.get("x-served-through")
        observed = f"upstream saw x-gateway={seen}; client got x-served-through={added}"
        return (seen, added) == ("wasmgate-demo", "wasmgate"), observed

    async def routing() -> tuple[bool, str]:
        async with session.post(url, json=_chat("which upstream?", model="model-b")) as response:
            echo = (await response.json())["echo"]
        served, header = echo["served_by"], echo["headers"].get("x-gateway-model-name")
        return (served, header) == ("upstream-b", "model-b"), f"served by {served}, x-gateway-model-name={header}"

    async def rejection() -> tuple[bool, str]:
        async with session.post(url, data=b"{not json", headers={"content-type": "application/json"}) as response:
            error = (await response.json()).get("error", {})
            return response.status == 400, f"{response.status}: {error.get('message', '')}"

    async def guarded() -> tuple[bool, str]:
        async with session.post(url, json=_chat("how do I build a bomb")) as response:
            message = (await response.json()).get("message", "")
            return response.status == 403, f"{response.status}: {message}"

    async def streaming() -> tuple[bool, str]:
        events, first, last = 0, 0.0, 0.0
        async with session.post(url, json=_chat("stream these words to me one by one", stream=True)) as response:
            async for line in response.content:
                if line.startswith(b"data:"):
                    events += 1
                    last = time.monotonic()
                    first = first or last
        spread = (last - first) * 1000
        return events > 5 and spread > 20, f"{events} events, the last {spread:.0f} ms after the first"

    await step("PII redaction", "e-mail, phone and card redacted before the upstream", redaction)
    await step("Header injection", "request and response headers added", injection)
    await step("Body-based routing", "model-b goes to upstream B", routing)
    await step("Rejected by a processor", "invalid JSON answered 400 by body-router", rejection)
    await step("Prompt guard", "a flagged prompt answered 403 after a moderation call", guarded)
    await step("Streaming (SSE)", "events reach the client one by one", streaming)
    return steps


def _table(steps: list[Step]) -> str:
    rows = [("", "step", "expected", "observed")]
    rows += [("ok" if s.ok else "FAIL", s.title, s.expected, s.observed) for s in steps]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = ["  ".join(cell.ljust(widths[i]) if i < 3 else cell for i, cell in enumerate(row)) for row in rows]
    return "\n".join(lines)


async def _run() -> bool:
    runners: list[web.AppRunner] = []
    try:
        _say("starting two mock OpenAI-compatible upstreams and a mock moderation service")
        for app in (openai.make_app("upstream-a"), openai.make_app("upstream-b"), moderation.make_app()):
            runners.append(await listen(app, "127.0.0.1:0"))
        config = demo_config(*(_address(runner) for runner in runners))
        _say(f"loading {len(config.processors)} processors shipped in {SHIPPED} (compiled once, then cached)")
        runners.append(await start_gateway(config, Runtime(cache_dir=config.cache_dir, max_instances=256)))
        gateway_url = _address(runners[-1])
        _say(f"gateway listening on {gateway_url}; route chat: inject -> guard -> router -> pii")
        async with aiohttp.ClientSession() as session:
            steps = await _steps(session, gateway_url)
        print()
        print(_table(steps))
        print()
        passed = sum(s.ok for s in steps)
        print(f"{passed} of {len(steps)} steps behaved as expected. Config: {PACKAGE / 'demo.yaml'}")
        return passed == len(steps)
    finally:
        for runner in reversed(runners):
            await runner.cleanup()


def main() -> int:
    print("wasmgate demo: example processors on a local gateway", flush=True)
    ok = asyncio.run(_run())
    sys.stdout.flush()
    return 0 if ok else 1
