"""Where modules come from: ``NAME.wasm`` in the module directories.

A catalog keeps the bytes of each module a successful load used, so a file
removed from a watched directory goes on serving until the config stops
naming its module.
"""

from __future__ import annotations

import threading
from pathlib import Path


class ModuleNotFound(Exception):
    """No module answers to a reference; the message says where it was looked for."""


def find_module(name: str, module_dirs: list[Path]) -> Path | None:
    """A module's file: ``NAME.wasm`` in the first directory that has it."""
    for directory in module_dirs:
        candidate = directory / f"{name}.wasm"
        if candidate.is_file():
            return candidate
    return None


class ModuleCatalog:
    """Module bytes by reference, with the last good version of each kept. Thread-safe."""

    def __init__(self, module_dirs: list[Path]) -> None:
        self.module_dirs = module_dirs
        self._kept: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def fetch(self, reference: str) -> bytes:
        path = find_module(reference, self.module_dirs)
        if path is not None:
            try:
                return path.read_bytes()
            except OSError:  # removed or replaced between the look and the read: as if absent
                pass
        with self._lock:
            kept = self._kept.get(reference)
        if kept is None:
            dirs = ", ".join(str(d) for d in self.module_dirs)
            raise ModuleNotFound(f"no {reference}.wasm in module_dirs ({dirs})")
        return kept

    def keep(self, modules: dict[str, bytes]) -> None:
        """Remembers the versions a successful load used."""
        with self._lock:
            self._kept.update(modules)
