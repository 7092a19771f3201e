"""Where modules are found by name: module_dirs first, then the examples the package ships."""

from __future__ import annotations

from pathlib import Path

from wasmgate.config import ProcessorConfig
from wasmgate.sources import SHIPPED, ModuleCatalog, OciSource


def catalog(tmp_path: Path) -> ModuleCatalog:
    (tmp_path / "modules").mkdir(exist_ok=True)
    return ModuleCatalog([tmp_path / "modules"], OciSource(tmp_path / "cache", [], None))


SPEC = ProcessorConfig(name="pii", module="pii-redact")


def test_a_shipped_example_is_found_when_module_dirs_lack_it(tmp_path: Path):
    found = catalog(tmp_path).fetch(SPEC)
    assert (found.wasm, found.source) == ((SHIPPED / "pii-redact.wasm").read_bytes(), str(SHIPPED / "pii-redact.wasm"))


def test_a_module_of_module_dirs_that_is_gone_serves_on_instead_of_the_shipped_one_of_its_name(tmp_path: Path):
    modules = catalog(tmp_path)
    mine = tmp_path / "modules" / "pii-redact.wasm"
    mine.write_bytes(b"\0asm mine")
    modules.keep({SPEC.module: modules.fetch(SPEC)})
    mine.unlink()  # being replaced, say
    assert modules.fetch(SPEC).wasm == b"\0asm mine"
