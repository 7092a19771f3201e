"""A plain aiohttp pass-through proxy: the baseline bench/gateway.py compares
wasmgate against. Same framework, event loop (uvloop) and pooled client as
the gateway, no processors.

    python bench/baseline_proxy.py --port 8100 --upstream http://127.0.0.1:8000
"""

from __future__ import annotations

import argparse

import aiohttp
import uvloop
from aiohttp import web

HOP_BY_HOP = {"connection", "keep-alive", "te", "trailer", "transfer-encoding", "upgrade", "host", "content-length"}


def make_app(upstream: str) -> web.Application:
    session: dict[str, aiohttp.ClientSession] = {}

    async def start(_: web.Application) -> None:
        session["client"] = aiohttp.ClientSession(auto_decompress=False, skip_auto_headers=("User-Agent",))

    async def stop(_: web.Application) -> None:
        await session["client"].close()

    async def proxy(request: web.Request) -> web.StreamResponse:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        body = await request.read()
        async with session["client"].request(
            request.method, upstream + request.raw_path, headers=headers, data=body or None
        ) as answer:
            out = {k: v for k, v in answer.headers.items() if k.lower() not in HOP_BY_HOP}
            return web.Response(status=answer.status, headers=out, body=await answer.read())

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", proxy)
    app.on_startup.append(start)
    app.on_cleanup.append(stop)
    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    args = parser.parse_args()
    uvloop.install()
    web.run_app(make_app(args.upstream), host="127.0.0.1", port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
