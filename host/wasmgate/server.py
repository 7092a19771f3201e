"""Running the gateway: one process, or a supervisor and worker processes.

Both listeners are bound once, first: an address in use is one clear
error, and a second gateway on a held port fails instead of sharing it in
silence. With one worker, one process serves both. With more, each worker
is a process with its own engine, accepting on the supervisor's socket;
the supervisor checks the config and modules once before any worker
starts, serves the admin listener (metrics of every worker, through
prometheus-client's multiprocess mode), and restarts a worker that dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Awaitable, Callable
from multiprocessing.context import SpawnProcess
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import TypeVar

from aiohttp import web

from . import logs, metrics
from .config import Config, ConfigError, HttpConfig, LogFormat, StateBackendKind, split_address
from .gateway import EdgeRunner, Gateway, app, build_routes, load_processors
from .reload import Reloader, publish
from .runtime import Runtime, instances_allowed
from .sources import ModuleCatalog
from .state import MemoryState, open_state

log = logging.getLogger("wasmgate.server")

T = TypeVar("T")


def check(config: Config) -> None:
    """Compiles every module, runs every processor's init and reaches the state backend; raises ``ConfigError``."""
    check_machine(config)
    if config.state.backend is StateBackendKind.REDIS or config.state.path is not None:
        asyncio.run(open_state(config.state).close())
    # Checking runs each init once and keeps no instance and no image: one slot per processor is enough.
    runtime = Runtime(cache_dir=config.cache_dir, max_instances=max(64, len(config.processors)))
    load_processors(runtime, config, serving=False)


def check_machine(config: Config) -> None:
    """Raises ``ConfigError`` when this machine cannot hold what ``config`` asks for, or safely."""
    problems = []
    allowed = instances_allowed()
    if allowed is not None and config.sandbox.max_instances > allowed:
        problems.append(
            f"sandbox.max_instances: {config.sandbox.max_instances} is more instance slots than this machine's"
            f" memory mappings leave room for ({allowed}, from vm.max_map_count); lower it or raise"
            " vm.max_map_count"
        )
    if config.cache_dir is not None and (problem := _not_private(config.cache_dir)):
        problems.append(f"cache_dir: {problem}")
    if problems:
        raise ConfigError("config", problems)


def _not_private(directory: Path) -> str | None:
    """Why ``directory`` may not hold the cache, if it may not: it holds native code the gateway runs, and
    init images with what processors' configs hold."""
    try:
        status = directory.stat()
    except FileNotFoundError:
        return None  # made private when first written
    if status.st_uid != os.getuid():
        return f"{directory} belongs to another user"
    if status.st_mode & 0o077:
        return f"{directory} is open to other users (mode {status.st_mode & 0o777:o}); chmod 700 it"
    return None


def shared_state(config: Config) -> tuple[Config, MemoryState | None]:
    """Makes the memory backend's database before worker processes start, so they all open the same one."""
    if config.state.backend is not StateBackendKind.MEMORY or config.state.path is not None:
        return config, None
    made = MemoryState.create()
    return config.model_copy(update={"state": config.state.model_copy(update={"path": made.path})}), made


def bind(address: str, key: str) -> socket.socket:
    """A listening socket on ``address``, held by this process alone; ``ConfigError`` naming ``key`` when the
    address cannot be had (in use by another process, say: never shared with it in silence)."""
    host, port = split_address(address)
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
        listening = socket.create_server((host, port), family=family, backlog=1024)
    except OSError as error:
        reason = os.strerror(error.errno) if error.errno else str(error)
        raise ConfigError("config", [f"{key}: cannot listen on {address}: {reason}"]) from None
    listening.setblocking(False)
    return listening


DEFAULT_HTTP = HttpConfig()


async def listen(
    application: web.Application, address: str | socket.socket, http: HttpConfig = DEFAULT_HTTP
) -> web.AppRunner:
    """Serves ``application`` on ``address``, or on a socket from ``bind``; clients' connections by ``http``."""
    # Bodies pass as sent: a server that decoded them would forward bytes that do not match their framing.
    # A client that leaves cancels its handler, and the upstream call it waits on with it.
    # Slow and malformed clients get the gateway's own answers, and no traceback (``EdgeRunner``).
    runner = EdgeRunner(
        application, http, access_log=None, handle_signals=False, auto_decompress=False, handler_cancellation=True
    )
    await runner.setup()
    if isinstance(address, socket.socket):
        await web.SockSite(runner, address).start()
    else:
        host, port = split_address(address)
        await web.TCPSite(runner, host, port, backlog=1024).start()
    return runner


RELOADER = web.AppKey("reloader", Reloader)


async def start_gateway(
    config: Config, runtime: Runtime, config_path: Path | None = None, listening: socket.socket | None = None
) -> web.AppRunner:
    """Loads the processors (off the event loop) and listens on ``config.listen`` (or ``listening``, bound to it).

    With ``config_path``, the config and the module directories are watched
    and reloaded live; the app's ``RELOADER`` takes SIGHUP.
    """
    catalog = ModuleCatalog.for_config(config)
    loop = asyncio.get_running_loop()
    config, made = shared_state(config)
    state = await loop.run_in_executor(None, open_state, config.state)
    processors = await loop.run_in_executor(None, load_processors, runtime, config, catalog, state)
    routes = build_routes(config.routes, processors)
    gateway = Gateway(
        routes, runtime, config.upstream, config.http, config.max_subrequest_depth, config.trusted_proxies
    )
    publish(processors)
    application = app(gateway)
    application.on_cleanup.append(lambda _: state.close())
    if made is not None:
        application.on_cleanup.append(lambda _: asyncio.to_thread(made.remove))
    if config_path is not None:
        reloader = application[RELOADER] = Reloader(gateway, runtime, catalog, state, config, processors, config_path)
        reloader.start()
        application.on_cleanup.append(lambda _: reloader.stop())
    return await listen(application, listening or config.listen, config.http)


async def serve(
    config: Config,
    config_path: Path | None,
    ready: Callable[[], None],
    stop: asyncio.Event,
    listening: socket.socket,
    admin: socket.socket | None,
) -> None:
    """Loads the processors, then serves on ``listening`` (and the admin app on ``admin``) until ``stop`` is
    set; SIGHUP reloads."""
    runtime = Runtime(cache_dir=config.cache_dir, max_instances=config.sandbox.max_instances)
    runners: list[web.AppRunner] = []
    try:
        runners.append(await start_gateway(config, runtime, config_path, listening))
        if RELOADER in runners[0].app:
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, runners[0].app[RELOADER].request)
        if admin is not None:
            from prometheus_client import REGISTRY

            from .admin import admin_app

            runners.append(await listen(admin_app(REGISTRY, lambda: True, metrics.flush), admin))
        _tune_garbage_collector()
        ready()
        log.info("serving on %s (pid %d)", config.listen, os.getpid())
        await stop.wait()
        log.info("stopping: no new connections; requests in flight have %gs to finish", config.http.drain_timeout)
        began = time.monotonic()
    finally:
        for runner in reversed(runners):
            await runner.cleanup()
    log.info("stopped after %.1fs", time.monotonic() - began)


GC_YOUNG_THRESHOLD = 50_000
"""Allocations between young-generation collections (CPython's default is 700)."""


def _tune_garbage_collector() -> None:
    """Fewer, cheaper cyclic collections while serving: what startup made (modules, config, compiled code) is
    frozen out of every later collection, and the young generation is collected every 50,000 allocations
    instead of 700. A request allocates hundreds of short-lived objects, nearly all freed by reference
    counting; measured: 5-7% more requests per second. Cyclic garbage waits a little longer."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])


def _run_loop(main: Callable[[asyncio.Event], Awaitable[T]]) -> T:
    """Runs ``main(stop)`` on uvloop when available, and returns what it returns; SIGTERM and SIGINT set
    ``stop``."""

    async def entry() -> T:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        return await main(stop)

    try:
        import uvloop
    except ImportError:
        return asyncio.run(entry())
    return uvloop.run(entry())


def run(config: Config, workers: int, config_path: Path | None = None) -> int:
    """Serves ``config``; with ``config_path``, reloads it (and the modules) live. Returns the exit status."""
    check_machine(config)
    # Bound here once: a held address is one clear error, and the workers share this process's socket.
    listening, admin = bind(config.listen, "listen"), bind(config.admin_listen, "admin_listen")
    if workers == 1:
        _run_loop(lambda stop: serve(config, config_path, lambda: None, stop, listening, admin))
        return 0
    return _supervise(config, workers, config_path, listening, admin)


def _worker(config: Config, config_path: Path | None, ready: Event, listening: socket.socket) -> None:
    logs.configure(os.getpid(), config.log_format is LogFormat.JSON)

    async def main(stop: asyncio.Event) -> None:
        # A worker ends with its supervisor, even one killed outright (kill -9, the OOM killer): an orphan
        # would serve on, with its old config, on the socket it shares.
        parent = multiprocessing.parent_process()
        assert parent is not None, "a worker is started by its supervisor"
        loop, supervisor = asyncio.get_running_loop(), parent.sentinel

        def supervisor_gone() -> None:
            loop.remove_reader(supervisor)
            log.warning("the supervisor is gone; stopping")
            stop.set()

        loop.add_reader(supervisor, supervisor_gone)
        await serve(config, config_path, ready.set, stop, listening, admin=None)

    try:
        _run_loop(main)
    except ConfigError as error:  # what the supervisor's check could not see, as a file gone since
        log.error("cannot start: %s", error)
        raise SystemExit(1) from None


class FailedStarts:
    """Workers in a row that exited before they served. Past ``limit`` the supervisor stops: a worker that
    cannot start (a file it cannot open, say) would only be restarted forever."""

    def __init__(self, limit: int = 3) -> None:
        self.limit = limit
        self.count = 0

    def exited(self, served: bool) -> bool:
        """A worker exited; whether to give up. One that served was a crash, and resets the count."""
        self.count = 0 if served else self.count + 1
        return self.count >= self.limit


def _supervise(
    config: Config, workers: int, config_path: Path | None, listening: socket.socket, admin: socket.socket
) -> int:
    check(config)  # one clear report of every problem, before any worker starts
    config, made = shared_state(config)  # one memory database for every worker
    metrics_dir = tempfile.mkdtemp(prefix="wasmgate-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir  # read by each worker's prometheus-client at import
    context = multiprocessing.get_context("spawn")
    slots: list[tuple[SpawnProcess, Event]] = []

    def start() -> tuple[SpawnProcess, Event]:
        ready = context.Event()
        # The socket goes to the worker as a duplicate of this one (multiprocessing's socket pickling).
        process = context.Process(target=_worker, args=(config, config_path, ready, listening), daemon=True)
        process.start()
        return process, ready

    async def main(stop: asyncio.Event) -> int:
        """Supervises until ``stop``; the exit status."""
        from prometheus_client import CollectorRegistry, multiprocess

        from .admin import admin_app

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        slots.extend(start() for _ in range(workers))

        def forward_sighup() -> None:  # each worker reloads on its own
            for process, _ in slots:
                if process.is_alive() and process.pid is not None:
                    os.kill(process.pid, signal.SIGHUP)

        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, forward_sighup)

        def ready() -> bool:
            return all(process.is_alive() and event.is_set() for process, event in slots)

        runner = await listen(admin_app(registry, ready, metrics.flush), admin)
        failed_starts = FailedStarts()
        try:
            while not stop.is_set():
                for i, (process, started) in enumerate(slots):
                    if process.is_alive():
                        continue
                    multiprocess.mark_process_dead(process.pid)
                    if failed_starts.exited(served=started.is_set()):
                        log.error(
                            "%d workers in a row exited before they served (the last with %s): stopping; their"
                            " errors are above",
                            failed_starts.count,
                            process.exitcode,
                        )
                        return 1
                    log.error("worker %d exited with %s; starting another", process.pid, process.exitcode)
                    slots[i] = start()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=1.0)
            return 0
        finally:
            await runner.cleanup()
            for process, _ in slots:
                process.terminate()
            deadline = time.monotonic() + config.http.drain_timeout + 5  # the workers drain, then exit
            for process, _ in slots:
                process.join(max(0.0, deadline - time.monotonic()))
            shutil.rmtree(metrics_dir, ignore_errors=True)
            if made is not None:
                made.remove()

    return _run_loop(main)
