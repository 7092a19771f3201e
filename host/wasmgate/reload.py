"""Live reload: modules and the config change without a restart or a failed request.

The module directories and the config file are watched (``watchfiles``),
SIGHUP asks for a reload too, and ``oci://`` tags with ``pull_policy:
always`` are resolved every ``oci.poll_interval``: a tag that moved reloads. A reload loads everything again off the
event loop: the config is validated, each module is compiled (or found in
the caches) and checked against the WIT world, and every processor's
``init`` runs with its config. Only if all of that succeeds are the new
routes swapped in, at once: a request holds the route it matched, so
requests already started finish with the versions they started with, and
new requests get the new ones. A reload that fails is logged and counted,
and the running versions keep serving.

Live: processors, routes, module_dirs, oci, trusted_proxies,
max_subrequest_depth. The listen addresses, ``sandbox``, ``upstream``,
``http``, ``cache_dir``, ``state`` and ``log_format`` need a restart; a
reload that changes them says so and applies the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

import watchfiles

from .config import Config, ConfigError, PullPolicy, load_config
from .gateway import Gateway, Processor, build_routes, load_processors
from .metrics import MODULE_INFO, RELOADS
from .runtime import Runtime
from .sources import ModuleCatalog, OciError
from .state import State

log = logging.getLogger("wasmgate.reload")

WATCH_DEBOUNCE_MS = 200
"""Changes are taken in once they have settled this long: a module being copied in is read whole."""
_NEEDS_RESTART = ("sandbox", "upstream", "http", "cache_dir", "state", "log_format")


def _addresses(config: Config) -> tuple[str, str]:
    return config.listen, config.admin_listen


def publish(processors: dict[str, Processor], previous: dict[str, Processor] | None = None) -> None:
    """Shows which module version serves each processor, in the log and in ``wasmgate_module_info``."""
    for name, processor in processors.items():
        before = previous.get(name) if previous else None
        if before is not None and before.module.sha256 == processor.module.sha256:
            continue
        if before is not None:
            MODULE_INFO.labels(name, before.module.sha256).set(0)
        MODULE_INFO.labels(name, processor.module.sha256).set(1)
        log.info("processor %s serves module %s sha256:%s", name, processor.module.name, processor.module.sha256)
    for name, gone in (previous or {}).items():
        if name not in processors:
            MODULE_INFO.labels(name, gone.module.sha256).set(0)


class Reloader:
    """Watches, validates and swaps for one gateway (one per worker process)."""

    def __init__(
        self,
        gateway: Gateway,
        runtime: Runtime,
        catalog: ModuleCatalog,
        state: State,
        config: Config,
        processors: dict[str, Processor],
        config_path: Path,
    ) -> None:
        self._gateway = gateway
        self._runtime = runtime
        self._catalog = catalog
        self._state = state
        self._config = config
        self._processors = processors
        self._config_path = config_path.resolve()
        # The listen addresses serving may come from the command line: a reload compares the file's with the file's.
        self._addresses_on_disk = _addresses(load_config(self._config_path))
        self._lock = asyncio.Lock()
        self._rewatch = asyncio.Event()  # set when module_dirs changed: the watch starts again
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._watch(), name="wasmgate-reload-watch"),
            asyncio.create_task(self._poll(), name="wasmgate-reload-poll"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def request(self) -> None:
        """Asks for a reload of the config and modules (SIGHUP)."""
        asyncio.get_running_loop().create_task(self.reload("SIGHUP"))

    async def _watch(self) -> None:
        while True:
            self._rewatch.clear()
            watched = [*self._config.module_dirs, self._config_path.parent]
            paths = [path for path in watched if path.is_dir()]
            # Not recursive: modules sit in their directories, and the config's folder may hold anything
            # (a venv, the gateway's own log) that would only cost watches and wake-ups.
            changes_seen = watchfiles.awatch(
                *paths, debounce=WATCH_DEBOUNCE_MS, stop_event=self._rewatch, recursive=False
            )
            async for changes in changes_seen:
                changed = {Path(path) for _, path in changes}
                if self._config_path in changed or any(path.suffix == ".wasm" for path in changed):
                    await self.reload(", ".join(sorted(path.name for path in changed)))

    async def _poll(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self._config.oci.poll_interval)
            tags = {
                spec.module
                for spec in self._config.processors
                if spec.module.startswith("oci://") and spec.pull_policy is PullPolicy.ALWAYS
            }
            for reference in sorted(tags):
                try:
                    latest = await loop.run_in_executor(None, self._catalog.oci.latest, reference)
                except OciError as error:
                    log.warning("cannot poll %s: %s", reference, error)
                    continue
                except Exception:  # a bug: polling must go on
                    log.exception("cannot poll %s", reference)
                    continue
                if latest != self._catalog.oci.cached_digest(reference):
                    await self.reload(f"{reference} moved to {latest}")
                    break  # the reload took every moved tag in

    async def reload(self, reason: str) -> bool:
        """Loads the config and modules again; swaps them in if all is well. True when applied."""
        async with self._lock:
            try:
                config = load_config(self._config_path)
                if _addresses(config) != self._addresses_on_disk:
                    log.warning("the listen addresses changed; they take effect at the next restart")
                self._addresses_on_disk = _addresses(config)
                config = config.model_copy(
                    update={"listen": self._config.listen, "admin_listen": self._config.admin_listen}
                )
                if config.state.path is None:  # the memory database made at start stays the one
                    config = config.model_copy(
                        update={"state": config.state.model_copy(update={"path": self._config.state.path})}
                    )
                processors = await asyncio.get_running_loop().run_in_executor(
                    None, load_processors, self._runtime, config, self._catalog_for(config), self._state
                )
            except ConfigError as error:
                RELOADS.labels("rejected").inc()
                log.error("reload after %s rejected; the running version keeps serving:\n%s", reason, error)
                return False
            except Exception:  # a bug: the watch and poll tasks that asked must live on, and the old version serve
                RELOADS.labels("rejected").inc()
                log.exception("reload after %s failed; the running version keeps serving", reason)
                return False
            self._apply(config, processors)
            RELOADS.labels("applied").inc()
            log.info("reload after %s applied: %d processors, %d routes", reason, len(processors), len(config.routes))
            return True

    def _catalog_for(self, config: Config) -> ModuleCatalog:
        if config.module_dirs != self._catalog.module_dirs or config.oci != self._config.oci:
            self._catalog = ModuleCatalog.for_config(config)
        return self._catalog

    def _apply(self, config: Config, processors: dict[str, Processor]) -> None:
        for key in _NEEDS_RESTART:
            if getattr(config, key) != getattr(self._config, key):
                log.warning("config key %s changed; it takes effect at the next restart", key)
        self._gateway.routes = build_routes(config.routes, processors)
        self._gateway.max_depth = config.max_subrequest_depth
        self._gateway.trusted_proxies = config.trusted_proxies
        publish(processors, self._processors)
        if config.module_dirs != self._config.module_dirs:
            self._rewatch.set()
        self._config, self._processors = config, processors
