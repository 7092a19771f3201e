"""Instance modes: fresh instances per request (the default), or a pool of initialized ones."""

from __future__ import annotations

import asyncio
import json

import pytest
from multidict import CIMultiDict

from wasmgate.gateway import CallClient, Chain, ChainRun, LocalResponse, RequestFacts, new_exchange
from wasmgate.runtime import Runtime

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


async def counts_of(runtime, processor, requests: int = 3, headers: dict[str, str] | None = None) -> list[str]:
    seen = []
    for _ in range(requests):
        driven = await drive(runtime, [processor], headers=headers)
        seen.append(driven.upstream_headers.get("x-count", "-"))
    return seen


async def test_fresh_instances_never_see_a_previous_request(runtime):
    processor = make_processor(runtime, COUNTS_REQUESTS)
    assert await counts_of(runtime, processor) == ["1", "1", "1"]


async def test_a_pooled_instance_serves_request_after_request(runtime):
    processor = make_processor(runtime, COUNTS_REQUESTS, instances="pooled")
    assert await counts_of(runtime, processor) == ["1", "2", "3"]


async def test_a_pooled_instance_is_recycled_after_max_requests(runtime):
    processor = make_processor(runtime, COUNTS_REQUESTS, instances="pooled", pool={"max_requests": 2})
    assert await counts_of(runtime, processor, requests=5) == ["1", "2", "1", "2", "1"]


async def test_a_pooled_instance_is_discarded_after_a_failure(runtime):
    processor = make_processor(runtime, COUNTS_REQUESTS, instances="pooled")
    assert await counts_of(runtime, processor, requests=2) == ["1", "2"]
    failed = await drive(runtime, [processor], headers={"x-misbehave": "1"})
    assert failed.status == 503
    assert await counts_of(runtime, processor, requests=2) == ["1", "2"]


async def test_a_pooled_instance_grown_past_max_memory_is_recycled(runtime):
    grows = guest(phases=1, request_headers="i32.const 2 memory.grow drop i32.const 0")
    processor = make_processor(runtime, grows, instances="pooled", pool={"max_memory": "160KiB"})
    await drive(runtime, [processor])  # 64 KiB + 128 KiB: past the limit, so not kept
    assert processor.pool.take() is None


async def test_requests_at_once_get_instances_of_their_own(runtime):
    processor = make_processor(runtime, COUNTS_REQUESTS, instances="pooled", pool={"size": 4})
    chain, client = Chain([processor]), CallClient()
    facts = RequestFacts("GET", "/", "", "req", "test", "", "127.0.0.1")
    runs = [
        ChainRun(
            chain, facts, new_exchange(facts, CIMultiDict(), "http://up.test", 1), runtime, runtime.scheduler(), client
        )
        for _ in range(8)
    ]
    for run in runs:  # all eight in flight at once: each holds its instance until it finishes
        await run.process_request(b"")
    for run in runs:
        await run.finish()
    counts = [dict(run.exchange.request_headers())["x-count"] for run in runs]
    assert counts == ["1"] * 8  # eight instances, each serving its first request
    kept = [processor.pool.take() for _ in range(5)]
    assert [sandbox is not None for sandbox in kept] == [True] * 4 + [False]  # pool.size of them were kept


async def test_requests_past_the_instance_slots_fail_with_overloaded_until_slots_free(tmp_path):
    runtime = Runtime(cache_dir=tmp_path, max_instances=2)
    processor = make_processor(runtime, COUNTS_REQUESTS, instances="pooled")
    chain, client = Chain([processor]), CallClient()
    facts = RequestFacts("GET", "/", "", "req", "test", "", "127.0.0.1")

    def run() -> ChainRun:
        return ChainRun(
            chain, facts, new_exchange(facts, CIMultiDict(), "http://up.test", 1), runtime, runtime.scheduler(), client
        )

    runs = [run() for _ in range(4)]  # all in flight at once: each holds its instance until it finishes
    outcomes = [await r.process_request(b"") for r in runs]
    refused = [json.loads(o.body)["error"] for o in outcomes if isinstance(o, LocalResponse)]
    assert len(refused) >= 2  # two slots for four requests
    assert {(e["cause"], e["phase"]) for e in refused} == {("overloaded", "init")}
    for r in runs:
        await r.finish()
    for _ in range(100):  # the core frees the slots of finished instances on a thread of its own
        if (await drive(runtime, [processor])).reached_upstream:
            break
        await asyncio.sleep(0.01)
    else:
        pytest.fail("no slot came free")
