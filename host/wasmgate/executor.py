"""The threads that run guest code, so the event loop never does.

Why not ``loop.run_in_executor`` with a ``ThreadPoolExecutor``: measured
on the project's 2-core machines with uvloop, a hop to a thread and back
cost 25-40 µs that way under load, and about 2 µs through this queue (the
event loop wakes once for many finished jobs). A request makes one hop per
phase, so the difference is most of the gateway's overhead.

A guest usually keeps the GIL while it runs (see ``sandbox``); one that
runs long gives the event loop a turn every tick (``give_loop_a_turn``),
so the loop and a long guest take turns instead of the guest starving it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

_STOP = object()
_job = threading.local()  # the event loop that handed this guest thread its job


class GuestPool:
    def __init__(self, threads: int) -> None:
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._work, name=f"wasmgate-guest-{i}", daemon=True) for i in range(threads)
        ]
        for thread in self._threads:
            thread.start()

    def run(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """Runs ``fn(*args)`` on a guest thread; await the result."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._jobs.put((loop, future, fn, args))
        return future

    def _work(self) -> None:
        while (job := self._jobs.get()) is not _STOP:
            loop, future, fn, args = job
            _job.loop = loop
            try:
                result, error = fn(*args), None
            except BaseException as exc:  # delivered to the awaiting coroutine
                result, error = None, exc
            _job.loop = None
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
                loop.call_soon_threadsafe(_settle, future, result, error)

    def close(self) -> None:
        for _ in self._threads:
            self._jobs.put(_STOP)
        for thread in self._threads:
            thread.join()


def give_loop_a_turn(timeout: float) -> None:
    """Waits, without the GIL, until the event loop this job came from has run once (at most ``timeout``).

    For a guest thread holding the GIL through a long guest call. Merely
    releasing the GIL is not enough: other guest threads may take it first.
    Off a guest thread (loading a module, say) it only yields.
    """
    loop = getattr(_job, "loop", None)
    if loop is None or loop.is_closed():
        os.sched_yield()
        return
    turn = threading.Event()
    loop.call_soon_threadsafe(turn.set)
    turn.wait(timeout)


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.cancelled():
        return
    if error is None:
        future.set_result(result)
    else:
        future.set_exception(error)
