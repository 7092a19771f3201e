"""Phase retries: a failed phase is tried again on a fresh instance, which sees the processor's checkpoint."""

from __future__ import annotations

import json

import pytest
from prometheus_client import REGISTRY

from wasmgate.runtime import Cause, ProcessorFailure

from .conftest import drive, make_processor
from .wat import guest

TRAP_ONCE = guest(
    phases=1,
    request_headers="""
        i32.const 512 call $get-checkpoint
        i32.const 512 i32.load8_u
        if (result i32)
          i32.const 0 {s:checkpoint-header} i32.const 516 i32.load i32.const 520 i32.load call $set-header
          i32.const 0
        else
          i32.const 0 {s:first-try-header} {s:yes} call $set-header
          {s:step} call $set-checkpoint
          unreachable
        end""",
    strings={"checkpoint-header": "x-checkpoint", "first-try-header": "x-first-try", "yes": "yes", "step": "step-1"},
)


def retries_of(processor) -> float:
    labels = {"processor": processor.name, "phase": "request_headers"}
    return REGISTRY.get_sample_value("wasmgate_processor_phase_retries_total", labels) or 0.0


async def test_a_retried_phase_sees_the_checkpoint_of_the_failed_try(runtime):
    processor = make_processor(runtime, TRAP_ONCE, phase_retries=1)
    driven = await drive(runtime, [processor])
    assert driven.reached_upstream
    assert driven.upstream_headers["x-checkpoint"] == "step-1"
    assert retries_of(processor) == 1


async def test_what_the_failed_try_changed_is_undone_before_the_retry(runtime):
    processor = make_processor(runtime, TRAP_ONCE, phase_retries=1)
    driven = await drive(runtime, [processor])
    assert "x-first-try" not in driven.upstream_headers


async def test_without_phase_retries_the_failure_mode_applies_at_once(runtime):
    processor = make_processor(runtime, TRAP_ONCE)
    driven = await drive(runtime, [processor])
    assert (driven.status, json.loads(driven.body)["error"]["cause"]) == (503, "trap")
    assert retries_of(processor) == 0


async def test_a_phase_that_keeps_failing_is_tried_phase_retries_times_more(runtime):
    processor = make_processor(runtime, guest(phases=1, request_headers="unreachable"), phase_retries=2)
    driven = await drive(runtime, [processor])
    assert driven.status == 503
    assert retries_of(processor) == 2


async def test_an_abi_violation_is_not_tried_again(runtime):
    processor = make_processor(runtime, guest(phases=1, request_headers="i32.const 7"), phase_retries=2)
    driven = await drive(runtime, [processor])
    assert json.loads(driven.body)["error"]["cause"] == "abi_violation"
    assert retries_of(processor) == 0


def test_a_checkpoint_over_64_kib_fails_with_memory_limit(runtime):
    too_big = guest(init="i32.const 0 i32.const 70000 call $set-checkpoint i32.const 0")
    with pytest.raises(ProcessorFailure) as raised:
        make_processor(runtime, too_big)
    assert raised.value.cause is Cause.MEMORY_LIMIT


CHECKPOINT_IN_INIT = guest(
    phases=1,
    init="""
        i32.const 512 call $get-checkpoint
        i32.const 2040 i32.const 512 i32.load8_u i32.store8
        i32.const 0 i32.const 0 i32.store8 i32.const 4 i32.const 1 i32.store8 i32.const 0""",
    request_headers="""
        i32.const 2040 i32.load8_u
        if (result i32)
          i32.const 2040 i32.const 0 i32.store8
          i32.const 0 {s:header} {s:yes} call $set-header
          i32.const 0
        else
          {s:step} call $set-checkpoint
          unreachable
        end""",
    strings={"header": "x-checkpoint-in-init", "yes": "yes", "step": "step-1"},
)
"""Passes only when its instance's ``init`` saw a checkpoint; else sets one and traps."""


async def test_a_fresh_instances_retry_runs_init_to_see_the_checkpoint_not_the_image(runtime):
    processor = make_processor(runtime, CHECKPOINT_IN_INIT, phase_retries=1)  # the image's init saw none
    driven = await drive(runtime, [processor])
    assert driven.upstream_headers.get("x-checkpoint-in-init") == "yes"
    assert retries_of(processor) == 1


async def test_a_pooled_processors_retry_starts_a_new_instance_whose_init_sees_the_checkpoint(runtime):
    processor = make_processor(runtime, CHECKPOINT_IN_INIT, phase_retries=1, instances="pooled")
    assert processor.pool is not None
    for _ in range(2):  # idle instances whose init ran before there was any checkpoint
        idle = processor.sandbox(runtime)
        await idle.start()
        assert processor.pool.give_back(idle)
    driven = await drive(runtime, [processor])
    assert driven.upstream_headers.get("x-checkpoint-in-init") == "yes"
    assert retries_of(processor) == 1
