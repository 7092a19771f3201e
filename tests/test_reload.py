"""Live reload: module files and the config change under a running gateway."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from prometheus_client import REGISTRY

from wasmgate import reload as reload_module
from wasmgate.config import load_config
from wasmgate.reload import WATCH_DEBOUNCE_MS
from wasmgate.server import RELOADER, start_gateway

from .conftest import header_echo
from .wat import header_setter

SETTLE = 5.0
"""Seconds a test waits at most for a change to show: a bound, not a measurement (see bench/reload.py)."""


def tagging(version: str) -> bytes:
    return header_setter("x-version", version)


def put(path: Path, data: bytes) -> None:
    """Replaces a file at once, as a deploy should (a half-written module is never read)."""
    temporary = path.with_suffix(".tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)


def reloads(result: str) -> float:
    return REGISTRY.get_sample_value("wasmgate_reloads_total", {"result": result}) or 0.0


async def next_reload(result: str, before: float) -> None:
    """Waits (a bounded while) until a reload with ``result`` has been counted since ``before``."""
    deadline = time.monotonic() + SETTLE
    while reloads(result) == before and time.monotonic() < deadline:
        await asyncio.sleep(0.05)


class Live:
    """A gateway reloading ``gateway.yaml`` in ``directory``, in front of an upstream echoing x-version."""

    def __init__(self, directory: Path, url: str, config: dict[str, Any]) -> None:
        self.directory = directory
        self.url = url
        self.config = config

    def write_config(self, **overrides: Any) -> None:
        put(self.directory / "gateway.yaml", yaml.safe_dump({**self.config, **overrides}).encode())

    async def version(self, client: aiohttp.ClientSession, path: str = "/") -> tuple[int, str]:
        async with client.get(f"{self.url}{path}") as response:
            return response.status, await response.text()

    async def until(self, client: aiohttp.ClientSession, expected: str, path: str = "/") -> None:
        deadline = time.monotonic() + SETTLE
        while time.monotonic() < deadline:
            if (await self.version(client, path))[1] == expected:
                return
            await asyncio.sleep(0.05)
        pytest.fail(f"{expected!r} did not show within {SETTLE} s")


@pytest.fixture
async def live(runtime, tmp_path: Path) -> AsyncIterator[Live]:
    upstream, upstream_url = await header_echo("x-version")
    runners = [upstream]
    (tmp_path / "modules").mkdir()
    put(tmp_path / "modules" / "tag.wasm", tagging("v1"))
    config = {
        "listen": "127.0.0.1:0",
        "module_dirs": ["modules"],
        "cache_dir": str(tmp_path / "cache"),
        "processors": [{"name": "tag", "module": "tag"}],
        "routes": [{"name": "main", "upstream": upstream_url, "processors": ["tag"]}],
    }
    put(tmp_path / "gateway.yaml", yaml.safe_dump(config).encode())
    config_path = tmp_path / "gateway.yaml"
    runners.append(await start_gateway(load_config(config_path), runtime, config_path=config_path))
    host, port = runners[1].addresses[0][:2]
    served = Live(tmp_path, f"http://{host}:{port}", config)
    await asyncio.sleep(0.3)  # the watch is set up
    yield served
    for runner in reversed(runners):
        await runner.cleanup()


async def test_a_replaced_module_serves_new_requests_and_no_request_fails(live):
    statuses: list[int] = []
    stop = asyncio.Event()

    async def steady_load(client: aiohttp.ClientSession) -> None:
        while not stop.is_set():
            statuses.append((await live.version(client))[0])

    async def answered(count: int) -> None:
        while len(statuses) < count:
            await asyncio.sleep(0.01)

    async with aiohttp.ClientSession() as client:
        load = asyncio.create_task(steady_load(client))
        await asyncio.wait_for(answered(10), SETTLE)  # the load runs before the swap
        put(live.directory / "modules" / "tag.wasm", tagging("v2"))
        await live.until(client, "v2")
        await asyncio.wait_for(answered(len(statuses) + 10), SETTLE)  # and after it
        stop.set()
        await load
    assert set(statuses) == {200}


async def test_a_corrupt_module_is_rejected_and_the_old_one_keeps_serving(live):
    rejected = reloads("rejected")
    put(live.directory / "modules" / "tag.wasm", b"\0asm garbage")
    await next_reload("rejected", rejected)
    assert reloads("rejected") == rejected + 1
    async with aiohttp.ClientSession() as client:
        assert await live.version(client) == (200, "v1")


async def test_a_removed_module_keeps_serving_until_the_config_drops_it(live):
    applied, rejected = reloads("applied"), reloads("rejected")
    (live.directory / "modules" / "tag.wasm").unlink()  # a reload, with the module gone from disk
    await next_reload("applied", applied)
    assert (reloads("applied") > applied, reloads("rejected")) == (True, rejected)
    async with aiohttp.ClientSession() as client:
        assert await live.version(client) == (200, "v1")
        live.write_config(processors=[], routes=[{**live.config["routes"][0], "processors": []}])
        await live.until(client, "none")


async def test_a_changed_config_takes_effect(live):
    async with aiohttp.ClientSession() as client:
        route = {**live.config["routes"][0], "match": {"path_prefix": "/tagged/"}}
        plain = {**live.config["routes"][0], "name": "plain", "processors": []}
        live.write_config(routes=[route, plain])
        await live.until(client, "none", "/other")
        assert await live.version(client, "/tagged/x") == (200, "v1")


async def test_a_broken_config_is_rejected_and_the_running_one_stays(live):
    rejected = reloads("rejected")
    live.write_config(routes=[{"name": "main", "upstream": "not a url"}])
    await next_reload("rejected", rejected)
    assert reloads("rejected") == rejected + 1
    async with aiohttp.ClientSession() as client:
        assert await live.version(client) == (200, "v1")


async def test_module_info_shows_the_version_each_processor_serves(live):
    def info(wasm: bytes) -> float | None:
        labels = {"processor": "tag", "sha256": hashlib.sha256(wasm).hexdigest()}
        return REGISTRY.get_sample_value("wasmgate_module_info", labels)

    assert info(tagging("v1")) == 1.0
    async with aiohttp.ClientSession() as client:
        put(live.directory / "modules" / "tag.wasm", tagging("v3"))
        await live.until(client, "v3")
    assert (info(tagging("v1")), info(tagging("v3"))) == (0.0, 1.0)


async def test_a_reload_that_fails_unexpectedly_leaves_the_old_version_serving_and_the_watch_alive(live, monkeypatch):
    real = reload_module.load_processors
    failures = iter([RuntimeError("a bug in loading")])

    def once_broken(*args: Any, **kwargs: Any) -> Any:
        for failure in failures:
            raise failure
        return real(*args, **kwargs)

    monkeypatch.setattr(reload_module, "load_processors", once_broken)
    rejected = reloads("rejected")
    put(live.directory / "modules" / "tag.wasm", tagging("v2"))
    await next_reload("rejected", rejected)
    async with aiohttp.ClientSession() as client:
        assert await live.version(client) == (200, "v1")
        put(live.directory / "modules" / "tag.wasm", tagging("v3"))  # the watch still sees changes
        await live.until(client, "v3")


async def test_a_module_in_a_subdirectory_of_a_module_dir_is_not_watched(live):
    applied = reloads("applied")
    (live.directory / "modules" / "nested").mkdir()
    put(live.directory / "modules" / "nested" / "tag.wasm", tagging("nested"))
    await asyncio.sleep(WATCH_DEBOUNCE_MS / 1000 * 3)  # past the debounce a watched change would have waited
    put(live.directory / "modules" / "tag.wasm", tagging("v2"))
    async with aiohttp.ClientSession() as client:
        await live.until(client, "v2")
    assert reloads("applied") == applied + 1


async def test_a_reload_that_changes_a_restart_only_key_says_so_and_applies_the_rest(live, caplog):
    applied = reloads("applied")
    with caplog.at_level(logging.WARNING, logger="wasmgate.reload"):
        live.write_config(http={"header_timeout": "5s"}, max_subrequest_depth=1)
        await next_reload("applied", applied)
    warned = [r.getMessage() for r in caplog.records if r.name == "wasmgate.reload"]
    assert "config key http changed; it takes effect at the next restart" in warned


async def test_listen_addresses_given_on_the_command_line_are_kept_and_warn_only_when_the_file_changes_them(
    runtime, tmp_path: Path, caplog
):
    config_path = tmp_path / "gateway.yaml"
    on_disk = {"listen": "127.0.0.1:1", "admin_listen": "127.0.0.1:2", "cache_dir": None}
    put(config_path, yaml.safe_dump(on_disk).encode())
    overridden = load_config(config_path).model_copy(update={"listen": "127.0.0.1:0"})  # as --listen does
    runner = await start_gateway(overridden, runtime, config_path=config_path)
    reloader = runner.app[RELOADER]
    try:
        with caplog.at_level(logging.WARNING, logger="wasmgate.reload"):
            assert await reloader.reload("a test")
            assert not [r for r in caplog.records if r.name == "wasmgate.reload"]
            put(config_path, yaml.safe_dump({**on_disk, "listen": "127.0.0.1:3"}).encode())
            assert await reloader.reload("a test")
        warned = [r.getMessage() for r in caplog.records if r.name == "wasmgate.reload"]
        assert warned == ["the listen addresses changed; they take effect at the next restart"]
    finally:
        await runner.cleanup()
