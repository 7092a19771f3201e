"""Routes: which upstream and which processors serve a request. First match wins."""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import yarl

from ..config import RouteConfig
from ..metrics import RouteMetrics
from .chain import Chain
from .processors import Processor


@dataclass(frozen=True, eq=False)
class Route:
    name: str
    path_prefix: str
    methods: frozenset[str] | None
    headers: tuple[tuple[str, str], ...]
    upstream: str
    chain: Chain
    tenant: str
    timeout: float
    metrics: RouteMetrics

    def matches(self, method: str, path: str, headers: Mapping[str, str]) -> bool:
        return (
            path.startswith(self.path_prefix)
            and (self.methods is None or method in self.methods)
            and all(headers.get(name) == value for name, value in self.headers)
        )


def build_routes(routes: Sequence[RouteConfig], processors: Mapping[str, Processor]) -> list[Route]:
    return [
        Route(
            name=route.name,
            path_prefix=route.match.path_prefix,
            methods=frozenset(route.match.methods) if route.match.methods is not None else None,
            headers=tuple(route.match.headers.items()),
            upstream=route.upstream,
            chain=Chain([processors[name] for name in route.processors]),
            tenant=route.tenant,
            timeout=route.timeout,
            metrics=RouteMetrics.of(route.name),
        )
        for route in routes
    ]


def target_problem(raw_path: str) -> str | None:
    """Why a request target is refused, if it is: routing and the upstream must see the same path."""
    if not raw_path.startswith("/"):
        return "only origin-form request targets are served (RFC 9112 3.2.1)"
    path = urllib.parse.unquote(raw_path.partition("?")[0])
    if any(segment in (".", "..") for segment in path.split("/")):
        return "the path has dot-segments, which an upstream may resolve differently (RFC 3986 5.2.4)"
    return None


def match(routes: Sequence[Route], method: str, path: str, headers: Mapping[str, str]) -> Route | None:
    return next((route for route in routes if route.matches(method, path, headers)), None)


def upstream_url(base: str, raw_path: str) -> yarl.URL:
    """Where to send a request: the upstream's own path, then the request's path
    and query exactly as the client encoded them."""
    url = yarl.URL(base)
    return yarl.URL(f"{url.scheme}://{url.raw_authority}{url.raw_path.rstrip('/')}{raw_path}", encoded=True)
