"""A small OpenAI-compatible upstream for the demo, the tests and the benchmarks.

``POST /v1/chat/completions`` answers with a completion that echoes the
last user message, plainly or streamed as server-sent events (``stream``,
with usage in a last event when ``stream_options.include_usage`` is set).
Every answer carries an ``echo`` field (not part of the OpenAI API) with
what this upstream received (header names in lower case), so a caller can
see what the gateway forwarded. Run it alone with ``python -m wasmgate.mocks.openai --port 8000``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

from aiohttp import web


def _last_user_text(messages: Any) -> str:
    for message in reversed(messages if isinstance(messages, list) else []):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, list):  # content parts
                return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
            return str(content)
    return ""


def make_app(name: str = "mock", completion_tokens: int | None = None, event_delay: float = 0.01) -> web.Application:
    """``completion_tokens`` fixes the usage each response reports (for token accounting tests)."""

    async def chat(request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = json.loads(raw)
        except ValueError:
            return web.json_response(
                {"error": {"message": "body is not JSON", "type": "invalid_request_error"}}, status=400
            )
        model = body.get("model", "mock-model")
        text = f"{name} heard: {_last_user_text(body.get('messages'))}"
        words = text.split(" ")
        prompt_tokens = len(json.dumps(body.get("messages", "")).split())
        completion = completion_tokens if completion_tokens is not None else len(words)
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": prompt_tokens + completion,
        }
        headers = {k.lower(): v for k, v in request.headers.items()}  # names are case-insensitive
        echo = {"served_by": name, "headers": headers, "body": body}
        created = int(time.time())
        if not body.get("stream"):
            return web.json_response(
                {
                    "id": "chatcmpl-mock",
                    "object": "chat.completion",
                    "created": created,
                    "model": model,
                    "choices": [
                        {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
                    ],
                    "usage": usage,
                    "echo": echo,
                }
            )
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)

        async def event(data: dict[str, Any] | str) -> None:
            payload = data if isinstance(data, str) else json.dumps(data)
            await response.write(f"data: {payload}\n\n".encode())

        chunk = {"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": created, "model": model}
        for i, word in enumerate(words):
            delta = {"content": word if i == 0 else f" {word}"}
            await event({**chunk, "choices": [{"index": 0, "delta": delta, "finish_reason": None}], "echo": echo})
            await asyncio.sleep(event_delay)
        await event({**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        if (body.get("stream_options") or {}).get("include_usage"):
            await event({**chunk, "choices": [], "usage": usage})
        await event("[DONE]")
        await response.write_eof()
        return response

    async def models(_: web.Request) -> web.Response:
        return web.json_response(
            {"object": "list", "data": [{"id": "mock-model", "object": "model", "owned_by": name}]}
        )

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/v1/models", models)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--name", default="mock")
    parser.add_argument("--completion-tokens", type=int, default=None)
    args = parser.parse_args()
    web.run_app(make_app(args.name, args.completion_tokens), host=args.host, port=args.port, access_log=None)


if __name__ == "__main__":
    main()
