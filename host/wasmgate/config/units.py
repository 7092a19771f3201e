"""The values a config file writes in its own units: durations, sizes, addresses, origins and URLs.

Each is an annotated type that parses what a user writes (``50ms``,
``16MiB``) and writes it back the same way (``config --explain``).
"""

from __future__ import annotations

import re
from typing import Annotated, Any

import yarl
from pydantic import BeforeValidator, PlainSerializer

_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(us|µs|ms|s|m|h)?\s*")
_DURATION_UNITS = {"us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(B|KB|KiB|MB|MiB|GB|GiB)?\s*")
_SIZE_UNITS = {None: 1, "B": 1, "KB": 10**3, "KiB": 2**10, "MB": 10**6, "MiB": 2**20, "GB": 10**9, "GiB": 2**30}


def _parse_duration(value: Any) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        match = _DURATION.fullmatch(str(value))
        if not match:
            raise ValueError(f"{value!r} is not a duration; write for example 50ms, 2s or 1m")
        seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2)]
    if seconds <= 0:
        raise ValueError("a duration must be positive")
    return seconds


def _format_duration(seconds: float) -> str:
    for unit, scale in (("h", 3600.0), ("m", 60.0), ("s", 1.0), ("ms", 1e-3)):
        if seconds >= scale and (seconds / scale) == round(seconds / scale, 3):
            return f"{seconds / scale:g}{unit}"
    return f"{seconds * 1e6:g}us"


def _parse_size(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        size = value
    else:
        match = _SIZE.fullmatch(str(value))
        if not match:
            raise ValueError(f"{value!r} is not a size; write for example 512KiB or 16MiB")
        size = int(float(match.group(1)) * _SIZE_UNITS[match.group(2)])
    if size <= 0:
        raise ValueError("a size must be positive")
    return size


def _format_size(size: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if size >= scale and size % scale == 0:
            return f"{size // scale}{unit}"
    return f"{size}B"


Duration = Annotated[float, BeforeValidator(_parse_duration), PlainSerializer(_format_duration)]
Size = Annotated[int, BeforeValidator(_parse_size), PlainSerializer(_format_size)]


def _parse_address(value: Any) -> str:
    host, sep, port = str(value).rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{value!r} is not an address; write host:port, for example 127.0.0.1:8080")
    return str(value)


Address = Annotated[str, BeforeValidator(_parse_address)]


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def _upstream(value: str) -> str:
    url = yarl.URL(value)
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError(f"{value!r} is not an absolute http or https URL")
    return value


Upstream = Annotated[str, BeforeValidator(_upstream)]


def _origin(value: Any) -> str:
    """``scheme://host[:port]``, normalized: lower case, default port dropped."""
    url = yarl.URL(str(value))
    if url.scheme not in ("http", "https") or not url.host or url.raw_path not in ("", "/") or url.query_string:
        raise ValueError(f"{value!r} is not an origin; write scheme://host[:port], for example http://127.0.0.1:9000")
    return str(url.origin())


Origin = Annotated[str, BeforeValidator(_origin)]
