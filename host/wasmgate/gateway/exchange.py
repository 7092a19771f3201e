"""One request as the gateway sees it: its facts, and the responses the gateway makes itself.

The state processors read and change (headers, status, upstream) is the
core's ``Exchange``; ``facts`` keeps what the access log and errors need.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from multidict import CIMultiDict

from ..runtime import MANAGED_HEADERS, Exchange

__all__ = ["MANAGED_HEADERS", "Exchange", "LocalResponse", "RequestFacts", "error_body", "new_exchange"]


@dataclass(frozen=True, slots=True)
class RequestFacts:
    """What ``get-request-info`` returns; fixed for the request's life."""

    method: str
    path: str
    query: str
    request_id: str
    route: str
    tenant: str
    client_address: str


def new_exchange(facts: RequestFacts, headers: CIMultiDict[str], upstream: str, processors: int) -> Exchange:
    """The exchange a request's ``processors`` share, from its facts and forwardable headers."""
    f = facts
    return Exchange(
        f.method,
        f.path,
        f.query,
        f.request_id,
        f.route,
        f.tenant,
        f.client_address,
        headers.items(),
        upstream,
        processors,
    )


@dataclass(slots=True)
class LocalResponse:
    """A response the gateway makes itself, for a processor or on a failure."""

    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""

    @classmethod
    def json_error(cls, status: int, error: dict[str, str]) -> LocalResponse:
        return cls(status, [("content-type", "application/json")], error_body(error))


def error_body(error: dict[str, str]) -> bytes:
    """The JSON body of every answer the gateway makes for itself: ``{"error": {"type": ..., ...}}``."""
    return json.dumps({"error": error}).encode()
