"""The WIT world (``wit/processor.wit``) as the host names it: hooks, phases, actions."""

from __future__ import annotations

import enum


class Hook(enum.Enum):
    """A handler export the host calls, numbered as the core numbers them."""

    INIT = 0
    REQUEST_HEADERS = 1
    REQUEST_BODY = 2
    RESPONSE_HEADERS = 3
    RESPONSE_BODY = 4
    DONE = 5

    # Members are singletons: identity hashing is correct, and a C slot instead of
    # Enum's Python-level __hash__ (a request looks hooks up in dicts many times).
    __hash__ = object.__hash__

    @property
    def phase(self) -> str:
        """The name used in config, metrics and errors: ``request_headers``."""
        return self.name.lower()


class Phases(enum.IntFlag):
    """WIT ``flags phases``: the hooks a processor asked for in ``init``."""

    REQUEST_HEADERS = 1
    REQUEST_BODY = 2
    RESPONSE_HEADERS = 4
    RESPONSE_BODY = 8
    DONE = 16


PHASE_OF_HOOK = {
    Hook.REQUEST_HEADERS: Phases.REQUEST_HEADERS,
    Hook.REQUEST_BODY: Phases.REQUEST_BODY,
    Hook.RESPONSE_HEADERS: Phases.RESPONSE_HEADERS,
    Hook.RESPONSE_BODY: Phases.RESPONSE_BODY,
    Hook.DONE: Phases.DONE,
}


class Action(enum.IntEnum):
    """WIT ``enum action``."""

    CONTINUE = 0
    RESPOND = 1
    PAUSE = 2


class MetricKind(enum.IntEnum):
    """WIT ``enum metric-kind``."""

    COUNTER = 0
    GAUGE = 1
    HISTOGRAM = 2


class LogLevel(enum.IntEnum):
    """WIT ``enum log-level``."""

    TRACE = 0
    DEBUG = 1
    INFO = 2
    WARN = 3
    ERROR = 4
