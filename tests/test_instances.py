"""Instance modes: fresh instances per request (the default), or a pool of initialized ones."""

from __future__ import annotations

import asyncio

from .conftest import drive, make_processor
from .wat import guest

COUNTS_REQUESTS = guest(
    phases=1,
    request_headers="""
        i32.const 600 i32.const 600 i32.load8_u i32.const 1 i32.add i32.store8
        i32.const 601 i32.const 600 i32.load8_u i32.const 48 i32.add i32.store8
        i32.const 0 {s:name} i32.const 601 i32.const 1 call $set-header
        i32.const 0 {s:trigger} i32.const 512 call $get-header
        i32.const 512 i32.load8_u
        if unreachable end
        i32.const 0""",
    strings={"name": "x-count", "trigger": "x-misbehave"},
)
"""Counts the requests its instance served in its own memory, and traps when a request asks it to."""


async def counts(runtime, pool, processor, requests: int = 3, headers: dict[str, str] | None = None) -> list[str]:
    seen = []
    for _ in range(requests):
        driven = await drive(runtime, pool, [processor], headers=headers)
        seen.append(driven.upstream_headers.get("x-count", "-"))
    return seen


async def test_fresh_instances_never_see_a_previous_request(runtime, pool):
    processor = make_processor(runtime, COUNTS_REQUESTS)
    assert await counts(runtime, pool, processor) == ["1", "1", "1"]


async def test_a_pooled_instance_serves_request_after_request(runtime, pool):
    processor = make_processor(runtime, COUNTS_REQUESTS, instances="pooled")
    assert await counts(runtime, pool, processor) == ["1", "2", "3"]


async def test_a_pooled_instance_is_recycled_after_max_requests(runtime, pool):
    processor = make_processor(runtime, COUNTS_REQUESTS, instances="pooled", pool={"max_requests": 2})
    assert await counts(runtime, pool, processor, requests=5) == ["1", "2", "1", "2", "1"]


async def test_a_pooled_instance_is_discarded_after_a_failure(runtime, pool):
    processor = make_processor(runtime, COUNTS_REQUESTS, instances="pooled")
    assert await counts(runtime, pool, processor, requests=2) == ["1", "2"]
    failed = await drive(runtime, pool, [processor], headers={"x-misbehave": "1"})
    assert failed.status == 503
    assert await counts(runtime, pool, processor, requests=2) == ["1", "2"]


async def test_a_pooled_instance_grown_past_max_memory_is_recycled(runtime, pool):
    grows = guest(phases=1, request_headers="i32.const 2 memory.grow drop i32.const 0")
    processor = make_processor(runtime, grows, instances="pooled", pool={"max_memory": "160KiB"})
    await drive(runtime, pool, [processor])  # 64 KiB + 128 KiB: past the limit, so not kept
    assert processor.pool.take() is None


async def test_requests_at_once_get_instances_of_their_own(runtime, pool):
    processor = make_processor(runtime, COUNTS_REQUESTS, instances="pooled", pool={"size": 4})
    results = await asyncio.gather(*(drive(runtime, pool, [processor]) for _ in range(8)))
    served = sorted(driven.upstream_headers["x-count"] for driven in results)
    assert served.count("1") >= 2  # more than one instance served the burst
    assert all(driven.reached_upstream for driven in results)
