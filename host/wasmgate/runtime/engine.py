"""The per-process runtime: one engine (the core's), compiled modules, the loop's scheduler.

Modules are compiled once and kept: compiled artifacts are cached on disk
by the module's sha256 and the engine's artifact tag (its wasmtime version
and settings), so a restart loads them instead of compiling. A processor's
init image (its module as ``init`` left it, see the core's ``image``) is
cached the same way, by what it was made from.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .. import _core
from .scheduler import Scheduler

log = logging.getLogger("wasmgate.runtime")

MAX_LINKED = 64
"""Linked modules kept in memory, so a reload links only what changed."""

TICK = 0.001
"""How often the epoch advances: deadlines hold to within a tick or two, and a guest that ran half a
tick yields to the loop (see ``scheduler``)."""

MAPPINGS_PER_INSTANCE = 8
"""Memory mappings an instance slot may take: its two fiber stacks and their guard pages, made up
front, and its memory and table once used."""

MAPPINGS_SPARE = 8192
"""Mappings left for the rest of the process: the interpreter, its libraries, compiled modules."""


def instances_allowed() -> int | None:
    """How many instance slots this machine's ``vm.max_map_count`` leaves room for; None if unknown.

    Past it, making an instance fails with ``overloaded`` long before the slots run out.
    """
    try:
        limit = int(Path("/proc/sys/vm/max_map_count").read_text())
    except (OSError, ValueError):
        return None
    return max(0, (limit - MAPPINGS_SPARE) // MAPPINGS_PER_INSTANCE)


ModuleError = _core.ModuleError


@dataclass(frozen=True, eq=False)
class CompiledModule:
    """A module compiled, checked against the WIT world, and linked."""

    name: str
    sha256: str
    core: _core.Module


class Runtime:
    """One per process."""

    def __init__(self, cache_dir: Path | None = None, max_instances: int = 4096, tick: float = TICK) -> None:
        """``max_instances``: instances alive at once (the pooling allocator's slots)."""
        self.engine = _core.Engine(max_instances, tick)
        self._cache_dir = cache_dir
        self._linked: dict[tuple[str, str], CompiledModule] = {}  # by name and sha256, in this process
        self._scheduler: Scheduler | None = None

    def scheduler(self) -> Scheduler:
        """The scheduler of the running event loop."""
        loop = asyncio.get_running_loop()
        if self._scheduler is None or self._scheduler.loop is not loop:
            self._scheduler = Scheduler(loop)
        return self._scheduler

    def init_image(
        self, module: CompiledModule, made_from: bytes, snapshot: Callable[[], bytes | None]
    ) -> _core.Module | None:
        """The init image of ``module`` for ``made_from`` (its config, and what its ``init`` chose and
        declared), from the cache, else ``snapshot()`` compiled; None when it cannot be snapshotted."""
        artifact = self._artifact("image-" + hashlib.sha256(module.sha256.encode() + made_from).hexdigest())
        name = f"{module.name} (initialized)"
        cached = self._load_artifact(name, artifact, None)
        if cached is not None:
            return cached
        try:
            image = snapshot()
            core = None if image is None else self.engine.compile(name, image)
        except (RuntimeError, ModuleError) as error:  # an image saves time, and is never needed
            log.warning("%s has no init image, so each instance runs init: %s", module.name, error)
            return None
        if core is not None:
            try:
                self._store_artifact(artifact, core)
            except OSError as error:
                log.warning("init image of %s not cached: %s", module.name, error)
        return core

    def compile(self, name: str, wasm: bytes) -> CompiledModule:
        """Compiles (or loads from the caches), checks and links a module; raises ``ModuleError``."""
        sha256 = hashlib.sha256(wasm).hexdigest()
        compiled = self._linked.get((name, sha256))
        if compiled is None:
            artifact = self._artifact(sha256)
            core = self._load_artifact(name, artifact, wasm)
            if core is None:
                core = self.engine.compile(name, wasm)
                self._store_artifact(artifact, core)
            compiled = CompiledModule(name, sha256, core)
            if len(self._linked) >= MAX_LINKED:
                self._linked.pop(next(iter(self._linked)))  # the oldest: reloads make new ones
            self._linked[(name, sha256)] = compiled
        return compiled

    def _artifact(self, key: str) -> Path | None:
        return self._cache_dir / f"{key}-{self.engine.artifact_tag}.cwasm" if self._cache_dir else None

    def _load_artifact(self, name: str, artifact: Path | None, wasm: bytes | None) -> _core.Module | None:
        if artifact is None or not artifact.exists():
            return None
        try:
            return self.engine.load(name, artifact.read_bytes(), wasm)
        except (ModuleError, OSError) as error:
            log.warning("ignoring unusable compiled artifact %s: %s", artifact, error)
            return None

    def _store_artifact(self, artifact: Path | None, module: _core.Module) -> None:
        if artifact is None:
            return
        # The cache holds native code: private to this user, written whole or not at all.
        artifact.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=artifact.parent, delete=False) as out:
            out.write(module.serialize())
        os.replace(out.name, artifact)
