"""The binary ABI is the WIT world's canonical ABI lowering, checked two ways.

1. ``wasm-tools component embed`` + ``component new`` accept every shipped
   guest, and the WAT test guest that imports every host call with the
   signatures the host defines: both sides match ``wit/``.
2. A guest written with the upstream ``wit-bindgen`` crate alone runs in
   the host unmodified.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from wasmgate import _core

from .conftest import MODULES, WIT, drive, make_processor, module_bytes
from .wat import HANDLER, guest


def wasm_tools() -> str:
    found = shutil.which("wasm-tools") or shutil.which("wasm-tools", path=str(Path.home() / ".cargo" / "bin"))
    if found is None:
        pytest.fail("wasm-tools is needed: cargo install wasm-tools --locked (.ci/run installs it)")
    return found


WASI = "wasi_snapshot_preview1"
ADAPTER_GLOB = (
    ".cargo/registry/src/*/wasi-preview1-component-adapter-provider-*/artefacts/wasi_snapshot_preview1.reactor.wasm"
)


def wasi_adapter() -> str:
    """The WASI preview 1 reactor adapter (crate wasi-preview1-component-adapter-provider; .ci/run fetches it)."""
    found = os.environ.get("WASMGATE_WASI_ADAPTER") or next(
        (str(path) for path in sorted(Path.home().glob(ADAPTER_GLOB))), None
    )
    if found is None:
        pytest.fail("the WASI adapter is needed: .ci/run fetches it (crate wasi-preview1-component-adapter-provider)")
    return found


def componentize(wasm: bytes, directory: Path) -> subprocess.CompletedProcess[str]:
    """Embeds the world into a core module and makes a component of it, as a toolchain would.

    A module importing WASI preview 1 (a Go guest) is adapted to WASI 0.2 on the way.
    """
    core, embedded = directory / "core.wasm", directory / "embedded.wasm"
    core.write_bytes(wasm)
    tool = wasm_tools()
    embed = [tool, "component", "embed", str(WIT), "--world", "processor", str(core), "-o", str(embedded)]
    subprocess.run(embed, check=True, capture_output=True, text=True)
    new = [tool, "component", "new", str(embedded), "-o", str(directory / "component.wasm")]
    if WASI.encode() in wasm:  # an import's module name is kept verbatim in the import section
        new += ["--adapt", f"{WASI}={wasi_adapter()}"]
    return subprocess.run(new, capture_output=True, text=True)


@pytest.mark.parametrize("module", sorted(path.stem for path in MODULES.glob("*.wasm")))
def test_every_shipped_guest_is_a_component_of_the_world(module, tmp_path):
    made = componentize(module_bytes(module), tmp_path)
    assert made.returncode == 0, made.stderr


def test_the_hosts_import_signatures_are_the_worlds(tmp_path):
    made = componentize(guest(), tmp_path)  # imports every host call as hostcalls.define does
    assert made.returncode == 0, made.stderr


def test_a_module_with_an_export_of_the_wrong_signature_is_refused(tmp_path):
    wrong = _core.wat2wasm(
        f"""(module
          (memory (export "memory") 1)
          (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32) i32.const 8)
          (func (export "{HANDLER}init") (param i32) (result i32) i32.const 0))"""
    )
    made = componentize(wrong, tmp_path)
    assert made.returncode != 0
    assert "init" in made.stderr


async def test_a_guest_built_with_upstream_wit_bindgen_alone_runs_unmodified(runtime):
    tag = make_processor(runtime, module_bytes("wit-bindgen-tag"), config={"tag": "from-wit-bindgen"})
    driven = await drive(runtime, [tag])
    assert driven.upstream_headers["x-tag"] == "from-wit-bindgen"
    assert driven.headers["x-tag"] == "from-wit-bindgen"
