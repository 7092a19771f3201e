"""Where a processor's sandboxes come from: a fresh one per request, or a pool.

``fresh`` (the default): every request gets a new instance, started from
the processor's init image for it and discarded after it. Nothing a
request leaves in guest memory reaches another request.

``pooled``: instances are made once and serve one request at a time,
again and again, which saves making an instance per request (a Go
module's costs about 0.35 ms here, mapping its image). The trade-off:
what a processor keeps in its memory between requests (globals, its
processor value) is still there for the next request *of the same
processor*; a pool belongs to one processor, so nothing passes between
processors or tenants. An instance leaves the pool for good after any
failure (trap, timeout, memory limit...), after ``pool.max_requests``
requests, or once its memory has grown past ``pool.max_memory``.
"""

from __future__ import annotations

import collections

from ..config import PoolConfig
from ..runtime import Sandbox


class SandboxPool:
    """The idle, initialized sandboxes of one pooled processor, for the requests of one event loop."""

    def __init__(self, config: PoolConfig) -> None:
        self._config = config
        self._idle: collections.deque[Sandbox] = collections.deque()

    def take(self) -> Sandbox | None:
        """An idle sandbox, or None when every one is busy (the caller starts another)."""
        return self._idle.pop() if self._idle else None  # the most recently used: its memory is warm

    def give_back(self, sandbox: Sandbox) -> bool:
        """Keeps ``sandbox``, which served a request without failing, for a later request; False when it
        must be discarded instead."""
        sandbox.requests_served += 1
        config = self._config
        if sandbox.requests_served >= config.max_requests or len(self._idle) >= config.size:
            return False
        if config.max_memory is not None and sandbox.memory_size > config.max_memory:
            return False
        sandbox.unbind()
        self._idle.append(sandbox)
        return True
