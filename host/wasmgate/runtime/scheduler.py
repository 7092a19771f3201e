"""Fairness among guests that share an event loop: one slice per loop turn.

Guest code runs on the event loop, as coroutines. A call that finishes
within half an epoch tick (nearly every hook) runs at once, in the coroutine that
makes it. A call that runs on for half a tick or more yields: the guest has
had its *slice* (half a tick to a tick and a half) and waits for its next
turn here.

The policy: between two looks at I/O, the event loop runs at most one
slice of guest code. Each loop turn the scheduler

1. fails every waiting call whose phase's deadline has passed, without
   running it: a deadline does not wait for a turn;
2. runs the calls that were made while the loop's turn was taken (made, not
   yet run), in order, until one of them turns out long and takes the
   turn's slice;
3. if no slice was taken yet, gives one to the longest-waiting long guest;
   long guests take slices round-robin.

A call made after a slice has run in the current turn waits for the next
turn, where it runs before any long guest's slice: a short hook waits at
most one turn, however many guests spin. So many long guests slow each other
down, never the loop, and a well-behaved request on another route is served
between slices. Deadlines are wall-clock, from when a call is made: waiting
for a turn is the phase's time.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable

from .. import _core

Waiting = tuple[asyncio.Future[int], _core.Sandbox, float]
"""A call waiting for a turn: whoever waits on its status, its sandbox, and its deadline (``time.monotonic()``)."""


class Scheduler:
    """The guests of one event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._made: collections.deque[Waiting] = collections.deque()  # made while the turn was taken, not run yet
        self._long: collections.deque[Waiting] = collections.deque()  # ran a slice, and yielded
        self.free = True
        """Whether guest code may run now: no slice has run in this loop turn. Read on every call."""
        self._scheduled = False

    def ran(self, status: int) -> int:
        """Notes the status of a call run while the turn was free: a yield took the turn's slice."""
        if status & _core.YIELDED:
            self.free = False
            self._schedule()
        return status

    def wait(self, sandbox: _core.Sandbox, ran: bool) -> asyncio.Future[int]:
        """The status of a call, once it has run in turns of its own and no longer yields.

        ``ran``: whether the call has run already (it yielded), or is to run first in the next turn
        (it was made while the turn was taken, or waited for the gateway).
        """
        future = self.loop.create_future()
        waiting = (future, sandbox, time.monotonic() + sandbox.remaining)
        (self._long if ran else self._made).append(waiting)
        self._schedule()
        return future

    def _schedule(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            # A timer already due, not call_soon: asyncio's loop runs due timers after the I/O
            # callbacks of the same turn, so I/O that came during a slice is read before the next.
            self.loop.call_at(self.loop.time(), self._run_turn)

    def _run_turn(self) -> None:
        self._scheduled = False
        self.free = True
        self._expire()
        while self._made and self.free:
            future, sandbox, deadline = self._made.popleft()
            self._poll(future, sandbox, deadline)
        if self._long and self.free:
            self._poll(*self._long.popleft())
        if self._made or self._long or not self.free:
            self._schedule()

    def _poll(self, future: asyncio.Future[int], sandbox: _core.Sandbox, deadline: float) -> None:
        """Runs a waiting call on for up to a slice; it waits on among the long guests if it yields again."""
        if future.cancelled():  # the request went away: the chain discards its sandbox
            return
        status = self._run(future, sandbox.poll)
        if status is None:
            return
        if status & _core.YIELDED:
            self.free = False
            self._long.append((future, sandbox, deadline))
        else:
            future.set_result(status)

    def _expire(self) -> None:
        """Fails the waiting calls whose deadline has passed."""
        now = time.monotonic()
        for queue in (self._made, self._long):
            if all(deadline > now for _, _, deadline in queue):
                continue
            waiting = list(queue)
            queue.clear()
            for future, sandbox, deadline in waiting:
                if future.cancelled():
                    continue
                status = self._run(future, sandbox.expire) if deadline <= now else _core.YIELDED
                if status is not None and status & _core.YIELDED:
                    queue.append((future, sandbox, deadline))
                elif status is not None:
                    future.set_result(status)

    @staticmethod
    def _run(future: asyncio.Future[int], call: Callable[[], int]) -> int | None:
        """``call()``'s status; an error goes to whoever waits on ``future`` instead of the event loop."""
        try:
            return call()
        except Exception as error:
            future.set_exception(error)
            return None
