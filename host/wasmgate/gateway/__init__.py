"""The gateway's request path: routes, the chain of processors, the upstream, the proxy.

A request reads top to bottom: ``proxy`` matches a ``routing`` route, runs
its ``chain`` of ``processors`` (sandboxes from ``instances``, their host
services from ``host``, their calls through ``subrequests``), sends the
request upstream, runs the chain again on the response, and answers.
What the HTTP parser refuses never becomes a request: ``edge`` answers it.
"""

from .chain import Chain, ChainRun
from .edge import EdgeRunner
from .exchange import LocalResponse, RequestFacts, new_exchange
from .processors import Processor, build_processor, load_processors
from .proxy import Gateway, app
from .routing import Route, build_routes
from .subrequests import CallClient

__all__ = [
    "CallClient",
    "Chain",
    "ChainRun",
    "EdgeRunner",
    "Gateway",
    "LocalResponse",
    "Processor",
    "RequestFacts",
    "Route",
    "app",
    "build_processor",
    "build_routes",
    "load_processors",
    "new_exchange",
]
