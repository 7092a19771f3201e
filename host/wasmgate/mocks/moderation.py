"""A keyword-based moderation service speaking the OpenAI moderations API.

``POST /v1/moderations`` with ``{"input": "..."}`` (or a list of strings)
answers ``{"results": [{"flagged": bool, "categories": {...}, "category_scores": {...}}]}``,
one result per input, as OpenAI's does, so the guards that work with it
work with a real moderation service. A category is flagged when its text
has one of the category's keywords. ``delay`` holds every answer, for
benchmarks of waiting processors. Run it alone with
``python -m wasmgate.mocks.moderation --port 9000``.
"""

from __future__ import annotations

import argparse
import asyncio
import re

from aiohttp import web

KEYWORDS = {
    "violence": ("kill", "attack", "bomb", "weapon", "shoot"),
    "harm": ("self-harm", "suicide", "hurt myself"),
    "sexual": ("explicit", "nsfw"),
    "hate": ("hateful", "slur"),
}


def classify(text: str) -> dict[str, object]:
    words = text.lower()
    categories = {
        name: any(re.search(rf"\b{re.escape(word)}", words) for word in keywords) for name, keywords in KEYWORDS.items()
    }
    return {
        "flagged": any(categories.values()),
        "categories": categories,
        "category_scores": {name: 0.99 if hit else 0.01 for name, hit in categories.items()},
    }


def make_app(delay: float = 0.0) -> web.Application:
    async def moderations(request: web.Request) -> web.Response:
        try:
            inputs = (await request.json())["input"]
        except (ValueError, KeyError, TypeError):
            error = {"message": "expected a JSON body with 'input'", "type": "invalid_request_error"}
            return web.json_response({"error": error}, status=400)
        if delay:
            await asyncio.sleep(delay)
        texts = inputs if isinstance(inputs, list) else [inputs]
        results = [classify(str(text)) for text in texts]
        return web.json_response({"id": "modr-mock", "model": "mock-moderation", "results": results})

    app = web.Application()
    app.router.add_post("/v1/moderations", moderations)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--delay", type=float, default=0.0, help="seconds to hold each answer")
    args = parser.parse_args()
    web.run_app(make_app(args.delay), host=args.host, port=args.port, access_log=None)


if __name__ == "__main__":
    main()
