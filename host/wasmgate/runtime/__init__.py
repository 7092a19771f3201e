"""The sandbox runtime: a thin, typed adapter over the native core (``wasmgate._core``).

``Runtime`` compiles and caches modules; ``Sandbox`` drives one instance's
calls on the event loop; ``Scheduler`` keeps long guests from starving it.
"""

from .. import _core
from .abi import PHASE_OF_HOOK, Action, Hook, LogLevel, MetricKind, Phases
from .engine import CompiledModule, ModuleError, Runtime, instances_allowed
from .failures import Cause, ProcessorFailure
from .host import Counter, Host
from .sandbox import Sandbox
from .scheduler import Scheduler

Guest = _core.Guest
"""A processor as its sandboxes see it: module, config and limits (the core's)."""
Exchange = _core.Exchange
"""One request and its response, as the processors of its route see and change them (the core's)."""
Snapshot = _core.Snapshot
"""What ``Exchange.snapshot`` saved, for ``Exchange.restore``."""
MANAGED_HEADERS = _core.MANAGED_HEADERS
"""Headers the gateway sets itself: hop-by-hop (RFC 9110 7.6.1) and framing."""

__all__ = [
    "MANAGED_HEADERS",
    "PHASE_OF_HOOK",
    "Action",
    "Cause",
    "CompiledModule",
    "Counter",
    "Exchange",
    "Guest",
    "Hook",
    "Host",
    "LogLevel",
    "MetricKind",
    "ModuleError",
    "Phases",
    "ProcessorFailure",
    "Runtime",
    "Sandbox",
    "Scheduler",
    "Snapshot",
    "instances_allowed",
]
