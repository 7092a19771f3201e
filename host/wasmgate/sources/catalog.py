"""Where modules come from: ``NAME.wasm`` in the module directories, then
among the example modules shipped in the package (``SHIPPED``), or an OCI
registry for ``oci://`` references (see ``oci``).

A catalog keeps the bytes of each module a successful load used, so a file
removed from a watched directory, or a registry out of reach, does not stop
a module that serves: it goes on serving until the config stops naming it.
"""

from __future__ import annotations

import logging
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from ..config import Config, ProcessorConfig, PullPolicy
from .oci import OciError, OciSource

log = logging.getLogger("wasmgate.sources")


SHIPPED = Path(__file__).parent.parent / "modules"
"""The example modules the package ships (pii-redact, header-inject, ...): found by name after module_dirs."""


class ModuleNotFound(Exception):
    """No module answers to a reference; the message says where it was looked for."""


@dataclass(frozen=True)
class Fetched:
    wasm: bytes
    source: str
    """Where the bytes came from, for errors: a file or an OCI reference."""

    @property
    def shipped(self) -> bool:
        return Path(self.source).parent == SHIPPED


def find_module(name: str, module_dirs: list[Path]) -> Path | None:
    """A module's file: ``NAME.wasm`` in the first directory that has it, else a shipped module of that name."""
    for directory in [*module_dirs, SHIPPED]:
        candidate = directory / f"{name}.wasm"
        if candidate.is_file():
            return candidate
    return None


class ModuleCatalog:
    """Module bytes by reference, with the last good version of each kept. Thread-safe."""

    def __init__(self, module_dirs: list[Path], oci: OciSource) -> None:
        self.module_dirs = module_dirs
        self.oci = oci
        self._kept: dict[str, Fetched] = {}
        self._lock = threading.Lock()

    @classmethod
    def for_config(cls, config: Config) -> ModuleCatalog:
        # Without a cache dir, pulls go to a directory of this process's own, never a shared one.
        cache = config.cache_dir or Path(tempfile.mkdtemp(prefix="wasmgate-"))
        return cls(config.module_dirs, OciSource(cache, config.oci.plain_http, config.oci.auth_file))

    def fetch(self, spec: ProcessorConfig) -> Fetched:
        """The module ``spec`` names, or the version kept from the last load when it cannot be had now."""
        reference = spec.module
        if reference.startswith("oci://"):
            try:
                return Fetched(self.oci.fetch(reference, always=spec.pull_policy is PullPolicy.ALWAYS), reference)
            except OciError as error:
                problem = str(error)
        else:
            path = find_module(reference, self.module_dirs)
            with self._lock:
                kept = self._kept.get(reference)
            if path is not None and path.parent == SHIPPED and kept is not None and not kept.shipped:
                path = None  # a module of module_dirs that is gone serves on, as any removed module does
            try:
                if path is not None:
                    return Fetched(path.read_bytes(), str(path))
            except OSError:  # removed or replaced between the look and the read: as if absent
                pass
            searched = ", ".join(str(d) for d in self.module_dirs)
            problem = f"no {reference}.wasm in module_dirs ({searched}) nor among the modules wasmgate ships"
        with self._lock:
            kept = self._kept.get(reference)
        if kept is None:
            raise ModuleNotFound(problem)
        log.warning("%s; the version loaded before serves on", problem)
        return kept

    def keep(self, modules: dict[str, Fetched]) -> None:
        """Remembers the versions a successful load used."""
        with self._lock:
            self._kept.update(modules)
