"""Fairness among guests that share an event loop: one slice per loop turn.

Guest code runs on the event loop, as coroutines. A call that finishes
within an epoch tick (nearly every hook) runs at once, in the coroutine that
makes it. A call that runs a whole tick yields: the guest has had its
*slice* (one to two ticks) and waits for its next turn here.

The policy: between two looks at I/O, the event loop runs at most one
slice of guest code. Each loop turn the scheduler

1. starts the calls that had to wait for this turn (below), in order, until
   one of them turns out long and uses the turn's slice;
2. if no slice was used yet, gives one to the longest-waiting long guest;
   long guests take slices round-robin.

A call made while a slice has already run in the current turn waits for the
next turn, where it starts before any long guest's slice: a short hook
waits at most one turn, however many guests spin. So many long guests slow
each other down, never the loop: each stall of the loop is at most two
ticks, and a well-behaved request on another route is served between
slices. Deadlines are wall-clock: a long guest waiting for its turn spends
its own deadline.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable

from .. import _core

Begin = Callable[[], int]


class Scheduler:
    """The guests of one event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._waiting: collections.deque[tuple[asyncio.Future[int], Begin]] = collections.deque()
        self._long: collections.deque[tuple[asyncio.Future[int], _core.Sandbox]] = collections.deque()
        self.free = True
        """Whether guest code may run now: no slice has run in this loop turn. Read on every call."""
        self._scheduled = False

    def ran(self, status: int) -> int:
        """Notes the status of a call made while the turn was free: a yield used the turn's slice."""
        if status & _core.YIELDED:
            self._sliced()
        return status

    def later(self, begin: Begin) -> asyncio.Future[int]:
        """The status of a call made in the next turn: ``begin`` makes the call (or polls it on)."""
        future = self.loop.create_future()
        self._waiting.append((future, begin))
        self._schedule()
        return future

    def _sliced(self) -> None:
        self.free = False
        self._schedule()

    def slice(self, sandbox: _core.Sandbox) -> asyncio.Future[int]:
        """The status of a yielded guest after it has been polled in a turn of its own."""
        future = self.loop.create_future()
        self._long.append((future, sandbox))
        self._schedule()
        return future

    def _schedule(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            self.loop.call_soon(self._run_turn)

    def _run_turn(self) -> None:
        self._scheduled = False
        self.free = True
        while self._waiting and self.free:
            future, begin = self._waiting.popleft()
            if future.cancelled():  # a cancelled request never makes its call
                continue
            status = self._run(future, begin)
            if status is not None:
                if status & _core.YIELDED:  # long after all: it used the turn's slice, and waits on in ``slice``
                    self.free = False
                future.set_result(status)
        if self._long and self.free:
            future, sandbox = self._long.popleft()
            if not future.cancelled():  # else the request went away: the chain discards its sandbox
                self.free = False
                status = self._run(future, sandbox.poll)
                if status is not None and status & _core.YIELDED:
                    self._long.append((future, sandbox))
                elif status is not None:
                    future.set_result(status)
        if self._waiting or self._long or not self.free:
            self._schedule()

    @staticmethod
    def _run(future: asyncio.Future[int], call: Begin) -> int | None:
        """``call()``'s status; an error goes to whoever waits on ``future`` instead of the event loop."""
        try:
            return call()
        except Exception as error:
            future.set_exception(error)
            return None
