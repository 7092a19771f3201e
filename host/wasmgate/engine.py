"""The per-process wasm runtime: one engine, the host calls, compiled modules.

Modules are compiled once and kept: compiled artifacts are cached on disk
by the module's sha256 (and the wasmtime version), so a restart loads them
instead of compiling. A native timer advances the engine's epoch (see
``epoch``), which is what lets a deadline interrupt a guest's CPU.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import wasmtime

from . import ffi, hostcalls, wasi  # noqa: F401 - importing wasi registers its host calls
from .abi import RESUME_EXPORT, Hook
from .epoch import EpochTicker

log = logging.getLogger("wasmgate.engine")

WASMTIME_VERSION = importlib.metadata.version("wasmtime")
_ARTIFACT_TAG = f"wasmtime-{WASMTIME_VERSION}-epoch"
"""Compiled code depends on the wasmtime version and on epoch interruption."""

_I32 = "i32"
_HOOK_SIGNATURES: dict[Hook, tuple[tuple[str, ...], tuple[str, ...]]] = {
    Hook.INIT: ((_I32, _I32), (_I32,)),
    Hook.REQUEST_HEADERS: ((_I32,), (_I32,)),
    Hook.REQUEST_BODY: ((_I32, _I32, _I32), (_I32,)),
    Hook.RESPONSE_HEADERS: ((_I32,), (_I32,)),
    Hook.RESPONSE_BODY: ((_I32, _I32, _I32), (_I32,)),
    Hook.DONE: ((), ()),
}
_REALLOC_SIGNATURE = ((_I32, _I32, _I32, _I32), (_I32,))


MAX_LINKED = 64
"""Linked modules kept in memory, so a reload links only what changed."""


class ModuleError(Exception):
    """A module that cannot serve as a processor, and why."""


@dataclass(frozen=True, eq=False)
class CompiledModule:
    """A module compiled, checked against the WIT world, and linked."""

    name: str
    sha256: str
    pre: wasmtime.InstancePre
    has_initialize: bool
    post_returns: frozenset[bytes]


class Runtime:
    """One per process; thread-safe to use from the guest threads."""

    def __init__(
        self,
        cache_dir: Path | None = None,
        max_instances: int = 10_000,
        max_memory_bytes: int = 4 << 30,
        tick: float = 0.002,
    ) -> None:
        """``tick``: how often the epoch advances. Deadlines hold to within a tick, and a guest keeping the
        GIL gives the event loop a turn every tick; each tick costs a short-lived native thread (about 1%
        of a core at 2 ms)."""
        self.engine = ffi.pooling_engine(max_instances, max_memory_bytes)
        self._linker = wasmtime.Linker(self.engine)
        hostcalls.define(self._linker)
        self._cache_dir = cache_dir
        self._linked: dict[tuple[str, str], CompiledModule] = {}  # by name and sha256, in this process
        self._ticker = EpochTicker(self.engine, tick)

    def close(self) -> None:
        self._ticker.close()

    def compile(self, name: str, wasm: bytes) -> CompiledModule:
        """Compiles (or loads from the caches), checks and links a module."""
        sha256 = hashlib.sha256(wasm).hexdigest()
        compiled = self._linked.get((name, sha256))
        if compiled is None:
            compiled = self._link(name, sha256, self._load_cached(sha256) or self._compile(name, wasm, sha256))
            if len(self._linked) >= MAX_LINKED:
                self._linked.pop(next(iter(self._linked)))  # the oldest: reloads make new ones
            self._linked[(name, sha256)] = compiled
        return compiled

    def _link(self, name: str, sha256: str, module: wasmtime.Module) -> CompiledModule:
        """Checks a compiled module against the world and links it to the host calls."""
        exports = {export.name: export.type for export in module.exports}
        _check_exports(name, exports)
        try:
            pre = self._linker.instantiate_pre(module)
        except wasmtime.WasmtimeError as error:
            raise ModuleError(f"module {name!r} cannot be linked: {error}") from None
        post_returns = frozenset(name.encode() for name in exports if name.startswith("cabi_post_"))
        return CompiledModule(name, sha256, pre, "_initialize" in exports, post_returns)

    def _artifact(self, sha256: str) -> Path | None:
        return self._cache_dir / f"{sha256}-{_ARTIFACT_TAG}.cwasm" if self._cache_dir else None

    def _load_cached(self, sha256: str) -> wasmtime.Module | None:
        artifact = self._artifact(sha256)
        if artifact is None or not artifact.exists():
            return None
        try:
            return wasmtime.Module.deserialize_file(self.engine, str(artifact))
        except wasmtime.WasmtimeError as error:
            log.warning("ignoring unusable compiled artifact %s: %s", artifact, error)
            return None

    def _compile(self, name: str, wasm: bytes, sha256: str) -> wasmtime.Module:
        try:
            module = wasmtime.Module(self.engine, wasm)
        except wasmtime.WasmtimeError as error:
            raise ModuleError(f"module {name!r} is not valid WebAssembly: {_first_line(error)}") from None
        artifact = self._artifact(sha256)
        if artifact is not None:
            # The cache holds native code: private to this user, written whole or not at all.
            artifact.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=artifact.parent, delete=False) as out:
                out.write(module.serialize())
            os.replace(out.name, artifact)
        return module


def _signature(ty: wasmtime.FuncType) -> tuple[tuple[str, ...], tuple[str, ...]]:
    return tuple(str(p) for p in ty.params), tuple(str(r) for r in ty.results)


def _check_exports(name: str, exports: dict[str, object]) -> None:
    """Names the first export the WIT world needs that the module lacks."""
    hint = "is it built for the wasmgate:processor@0.1.0 world?"
    if not isinstance(exports.get("memory"), wasmtime.MemoryType):
        raise ModuleError(f"module {name!r} does not export its memory as 'memory'; {hint}")
    # Calls into the guest are unchecked: every function the host may call
    # must have exactly the type the host calls it with.
    required = {hook.export.decode(): sig for hook, sig in _HOOK_SIGNATURES.items()}
    required["cabi_realloc"] = _REALLOC_SIGNATURE
    required[RESUME_EXPORT.decode()] = ((), (_I32,))
    optional = {hook.post_return.decode(): (sig[1], ()) for hook, sig in _HOOK_SIGNATURES.items()}
    optional["_initialize"] = ((), ())
    for export, expected in (*required.items(), *optional.items()):
        ty = exports.get(export)
        if ty is None and export in optional:
            continue
        if not isinstance(ty, wasmtime.FuncType):
            raise ModuleError(f"module {name!r} does not export function {export!r}; {hint}")
        if _signature(ty) != expected:
            raise ModuleError(
                f"module {name!r} exports {export!r} with signature {_signature(ty)}, expected {expected}"
            )


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0]
