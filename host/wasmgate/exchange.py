"""One request and its response, as processors see and change them."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from multidict import CIMultiDict

from .failures import AbiViolation

# RFC 9110 5.6.2: a field name is a token.
TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BAD_VALUE = re.compile(r"[\r\n\x00]")

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
"""RFC 9110 7.6.1: meaningful for one connection only, never forwarded."""

FRAMING = frozenset({"content-length", "transfer-encoding"})
"""Set by the gateway from the body it actually sends."""

MANAGED = HOP_BY_HOP | FRAMING


def check_header(name: str, value: str) -> None:
    """Refuses a header a processor may not set: bad syntax, or one the gateway manages."""
    if not TOKEN.fullmatch(name):
        raise AbiViolation(f"{name!r} is not a valid header name")
    if _BAD_VALUE.search(value):
        raise AbiViolation(f"the value of header {name!r} contains CR, LF or NUL")
    if name.lower() in MANAGED:
        raise AbiViolation(f"header {name!r} is managed by the gateway")


def header_bytes(headers: CIMultiDict[str]) -> int:
    return sum(len(name) + len(value) for name, value in headers.items())


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


@dataclass(slots=True)
class LocalResponse:
    """A response the gateway makes itself, for a processor or on a failure."""

    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""

    @classmethod
    def json_error(cls, status: int, error: dict[str, str]) -> LocalResponse:
        return cls(status, [("content-type", "application/json")], json.dumps({"error": error}).encode())


class Exchange:
    """The request and response state one chain run reads and writes.

    ``request_sent`` and ``response_sent`` record what has left the gateway:
    from then on those headers (and the upstream) can no longer change.
    ``depth`` counts the gateways' sub-requests that led to this request.
    """

    __slots__ = (
        "facts",
        "request_headers",
        "upstream",
        "response_status",
        "response_headers",
        "request_sent",
        "response_sent",
        "depth",
    )

    def __init__(self, facts: RequestFacts, request_headers: CIMultiDict[str], upstream: str, depth: int = 0) -> None:
        self.facts = facts
        self.request_headers = request_headers
        self.upstream = upstream
        self.response_status = 0
        self.response_headers: CIMultiDict[str] | None = None
        self.request_sent = False
        self.response_sent = False
        self.depth = depth

    def set_response(self, status: int, headers: CIMultiDict[str]) -> None:
        self.response_status = status
        self.response_headers = headers

    def snapshot(self) -> tuple[CIMultiDict[str], str, int, CIMultiDict[str] | None]:
        """What a ``fail_open`` processor's failed hook may have changed."""
        response = self.response_headers.copy() if self.response_headers is not None else None
        return self.request_headers.copy(), self.upstream, self.response_status, response

    def restore(self, saved: tuple[CIMultiDict[str], str, int, CIMultiDict[str] | None]) -> None:
        self.request_headers, self.upstream, self.response_status, self.response_headers = saved
