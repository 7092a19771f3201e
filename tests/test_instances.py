"""Instance modes: fresh instances per request (the default), or a pool of initialized ones."""

from __future__ import annotations

import asyncio
import json

import pytest
from multidict import CIMultiDict

from wasmgate.gateway import CallClient, Chain, ChainRun, LocalResponse, RequestFacts, new_exchange
from wasmgate.runtime import ModuleError, Runtime

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


def init_leaves_seven(extra: str = "") -> bytes:
    """A guest whose init logs a line and leaves 7 in its memory; each request reports what it finds there."""
    return guest(
        phases=1,
        init="""i32.const 2 {s:line} call $log
            i32.const 700 i32.const 55 i32.store8
            i32.const 0 i32.const 0 i32.store8 i32.const 4 i32.const 1 i32.store8 i32.const 0""",
        request_headers="i32.const 0 {s:name} i32.const 700 i32.const 1 call $set-header i32.const 0",
        strings={"line": "init ran", "name": "x-from-init"},
        extra=extra,
    )


def inits_logged(caplog) -> int:
    return sum(record.getMessage().endswith("init ran") for record in caplog.records)


async def test_fresh_instances_start_from_the_image_init_left_so_init_runs_once_per_load(runtime, caplog):
    with caplog.at_level("INFO", logger="wasmgate.guest"):
        processor = make_processor(runtime, init_leaves_seven())
        seen = [(await drive(runtime, [processor])).upstream_headers["x-from-init"] for _ in range(3)]
    assert seen == ["7", "7", "7"]
    assert inits_logged(caplog) == 1


async def test_a_processor_with_init_image_false_runs_init_in_each_fresh_instance(runtime, caplog):
    with caplog.at_level("INFO", logger="wasmgate.guest"):
        processor = make_processor(runtime, init_leaves_seven(), init_image=False)
        for _ in range(3):
            await drive(runtime, [processor])
    assert inits_logged(caplog) == 4  # at load, and in each request's instance


async def test_a_module_that_cannot_be_snapshotted_runs_init_in_each_fresh_instance(runtime, caplog):
    # Wizer cannot snapshot a module that changes its tables.
    grows_its_table = "(table 1 funcref) (func (drop (table.grow (ref.null func) (i32.const 1))))"
    with caplog.at_level("INFO", logger="wasmgate.guest"):
        processor = make_processor(runtime, init_leaves_seven(grows_its_table))
        seen = [(await drive(runtime, [processor])).upstream_headers["x-from-init"] for _ in range(3)]
    assert seen == ["7", "7", "7"]
    assert inits_logged(caplog) == 4  # at load, and in each request's instance


def test_a_module_exporting_a_name_the_gateway_reserves_is_refused(runtime):
    faking = init_leaves_seven('(global (export "__wizer_memory_0") i32 (i32.const 0))')
    with pytest.raises(ModuleError, match="exports '__wizer_memory_0': names starting __wizer_ are the gateway's"):
        runtime.compile("faking", faking)


def test_an_init_image_that_cannot_be_made_is_none_and_a_warning(runtime, caplog):
    module = runtime.compile("seven", init_leaves_seven())

    def broken_snapshot() -> bytes:
        raise RuntimeError("the snapshot panicked: boom")

    for snapshot in (broken_snapshot, lambda: b"\0asm not a module"):
        assert runtime.init_image(module, repr(snapshot).encode(), snapshot) is None
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 2
    assert all("seven has no init image, so each instance runs init" in w for w in warnings)


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
