"""Guests written in WAT for tests: a complete, well-behaved processor whose
parts a test replaces to make it misbehave in exactly one way.

Every guest imports every host call (as ``$get-header``, ``$log``, ...),
has a bump ``cabi_realloc`` that grows memory as needed, and a static area
at 0..16 for ``init``'s result. Text given in ``strings`` is placed from
address 1024 and its ``(ptr len)`` is available as ``$name``-style
placeholders: ``{s:name}`` (text or raw bytes) expands to ``i32.const PTR i32.const LEN``.
"""

from __future__ import annotations

import re
import struct

from wasmgate import _core

HOST = "wasmgate:processor/host@0.1.0"
HANDLER = "wasmgate:processor/handler@0.1.0#"

HOST_CALLS = {name: signature for module, name, signature in _core.Engine(1, 0.01).imports() if module == HOST}
"""Imported as the host defines them: the conformance check holds the host to the WIT world."""

ALL_PHASES = 31
CONTINUE, RESPOND, PAUSE = "i32.const 0", "i32.const 1", "i32.const 2"
SPIN = "(loop $forever (br $forever)) unreachable"

REALLOC = """
  (func $realloc (export "cabi_realloc") (param i32 i32 i32 i32) (result i32)
    (local $p i32)
    global.get $heap local.get 2 i32.add i32.const 1 i32.sub
    i32.const 0 local.get 2 i32.sub i32.and
    local.set $p
    local.get $p local.get 3 i32.add global.set $heap
    (block $ok (loop $grow
      global.get $heap memory.size i32.const 16 i32.shl i32.le_u br_if $ok
      i32.const 1 memory.grow i32.const -1 i32.eq if unreachable end
      br $grow))
    local.get $p)
"""


def guest_wat(
    *,
    phases: int = ALL_PHASES,
    init: str | None = None,
    request_headers: str = CONTINUE,
    request_body: str = CONTINUE,
    response_headers: str = CONTINUE,
    response_body: str = CONTINUE,
    resume: str = CONTINUE,
    done: str = "",
    realloc: str = REALLOC,
    memory_pages: int = 1,
    strings: dict[str, str | bytes] | None = None,
    headers: dict[str, list[tuple[str, str]]] | None = None,
    imports: str = "",
    extra: str = "",
) -> str:
    """The WAT text of a guest; hook bodies are instructions leaving an action; ``imports`` adds imports
    (WASI's, say), ``extra`` more definitions."""
    layout: dict[str, tuple[int, int]] = {}
    data = []
    offset = 1024

    def place(name: str, encoded: bytes, count: int | None = None) -> int:
        nonlocal offset
        start = offset
        layout[name] = (start, len(encoded) if count is None else count)
        data.append(f'  (data (i32.const {start}) "{_escape(encoded)}")')
        offset += len(encoded) + 8 - len(encoded) % 8
        return start

    for name, text in (strings or {}).items():
        place(f"s:{name}", text if isinstance(text, bytes) else text.encode())
    for name, pairs in (headers or {}).items():
        flat = []
        for i, pair in enumerate(pairs):
            for j, text in enumerate(pair):
                encoded = text.encode()
                flat += [place(f"h:{name}:{i}:{j}", encoded), len(encoded)]
        place(f"h:{name}", struct.pack(f"<{len(flat)}I", *flat), len(pairs))
    if init is None:
        init = f"i32.const 0 i32.const 0 i32.store8 i32.const 4 i32.const {phases} i32.store8 i32.const 0"
    host_imports = "\n".join(f'  (import "{HOST}" "{name}" (func ${name} {sig}))' for name, sig in HOST_CALLS.items())
    text = f"""(module
{host_imports}
{imports}
  (memory (export "memory") {memory_pages})
  (global $heap (mut i32) (i32.const {max(offset, 4096)}))
{chr(10).join(data)}
{realloc}
  (func (export "{HANDLER}init") (param i32 i32) (result i32) {init})
  (func (export "{HANDLER}on-request-headers") (param i32) (result i32) {request_headers})
  (func (export "{HANDLER}on-request-body") (param i32 i32 i32) (result i32) {request_body})
  (func (export "{HANDLER}on-response-headers") (param i32) (result i32) {response_headers})
  (func (export "{HANDLER}on-response-body") (param i32 i32 i32) (result i32) {response_body})
  (func (export "{HANDLER}on-resume") (result i32) {resume})
  (func (export "{HANDLER}on-done") {done})
{extra}
)"""
    return re.sub(r"\{([sh]:[\w-]+)\}", lambda m: "i32.const {} i32.const {}".format(*layout[m.group(1)]), text)


def guest(**parts: object) -> bytes:
    return _core.wat2wasm(guest_wat(**parts))


def _escape(data: bytes) -> str:
    return "".join(chr(b) if 32 <= b < 127 and b not in (34, 92) else f"\\{b:02x}" for b in data)


def header_setter(name: str, value: str) -> bytes:
    """A guest that sets request header ``name`` to ``value``: which version ran shows upstream."""
    return guest(
        phases=1,
        request_headers="i32.const 0 {s:name} {s:value} call $set-header i32.const 0",
        strings={"name": name, "value": value},
    )
