"""The ``host`` interface of the WIT world: what a processor may call.

Each import is defined once on the linker through wasmtime's unchecked
callback ABI, with its flat canonical-ABI signature. A call runs on the
guest's thread, against the sandbox running there (``sandbox.active``).

A host call that is misused (bad pointers or strings, out of phase,
re-entered from ``cabi_realloc``, over a bound) stops the guest: the
precise failure is kept on the sandbox and a trap unwinds the guest.
"""

from __future__ import annotations

import ctypes
import logging
import struct
import time
from collections.abc import Callable

import wasmtime
import yarl
from multidict import CIMultiDict

from . import ffi
from .abi import HOST_MODULE, GuestMemory, Hook, LogLevel, Message, MetricKind, encode_headers, enum_value
from .exchange import LocalResponse, check_header, header_bytes
from .failures import AbiViolation, Cause, ProcessorFailure
from .metrics import GUEST_LOG_DROPPED
from .sandbox import Sandbox, active
from .state import State, StateUnavailable
from .subrequests import CallResponse

guest_log = logging.getLogger("wasmgate.guest")

MAX_LOG_LINES = 100
"""Per sandbox (one request): a chatty or hostile guest cannot flood the log."""
MAX_LOG_BYTES = 4096
MAX_HEADER_BYTES = 64 * 1024
"""Bounds each header map a guest can grow, so a guest cannot grow the host."""
MAX_CHECKPOINT_BYTES = 64 * 1024
MAX_STATE_KEY_BYTES = 1024
MAX_STATE_VALUE_BYTES = 64 * 1024

_LOG_LEVELS = {
    LogLevel.TRACE: logging.DEBUG,
    LogLevel.DEBUG: logging.DEBUG,
    LogLevel.INFO: logging.INFO,
    LogLevel.WARN: logging.WARNING,
    LogLevel.ERROR: logging.ERROR,
}
_REQUEST_HOOKS = frozenset({Hook.REQUEST_HEADERS, Hook.REQUEST_BODY})
_RESPONSE_HOOKS = frozenset({Hook.RESPONSE_HEADERS, Hook.RESPONSE_BODY})
_BODY_HOOKS = frozenset({Hook.REQUEST_BODY, Hook.RESPONSE_BODY})

HostFunc = Callable[..., int | None]
_FUNCS: dict[tuple[str, str], tuple[str, bool, HostFunc]] = {}
_callbacks: list[ctypes._CFuncPtr] = []  # the linker calls these for the process's life


def host_call(
    name: str, params: str, returns: bool = False, module: str = HOST_MODULE
) -> Callable[[HostFunc], HostFunc]:
    """Registers the implementation of host function ``name`` (of the WIT world's host interface by default).

    ``params`` spells its flat parameters: ``i`` for i32, ``I`` for i64, ``f`` for f64.
    """

    def register(func: HostFunc) -> HostFunc:
        _FUNCS[(module, name)] = (params, returns, func)
        return func

    return register


_WAT_TYPES = {"i": "i32", "I": "i64", "f": "f64"}


def signatures() -> dict[str, str]:
    """The host interface's flat core signatures in WAT, for tests and tools: ``(param i32) (result i32)``."""
    return {
        name: f"(param {' '.join(_WAT_TYPES[p] for p in params)})" + (" (result i32)" if returns else "")
        for (module, name), (params, returns, _) in _FUNCS.items()
        if module == HOST_MODULE
    }


def define(linker: wasmtime.Linker) -> None:
    """Defines every host call on ``linker``."""
    types = {"i": wasmtime.ValType.i32(), "I": wasmtime.ValType.i64(), "f": wasmtime.ValType.f64()}
    for (module, name), (params, returns, func) in _FUNCS.items():
        callback = ffi.HostCallback(_trampoline(name, params, returns, func))
        _callbacks.append(callback)
        results = [types["i"]] if returns else []
        ffi.define_host_func(linker, module, name, [types[p] for p in params], results, callback)


def _trampoline(name: str, params: str, returns: bool, func: HostFunc) -> Callable[..., int]:
    fields = tuple({"i": "u32", "I": "i64", "f": "f64"}[p] for p in params)

    def call(_env: int, caller: int, slots: ctypes.Array[ffi.RawVal], _count: int) -> int:
        sandbox = active()
        if sandbox is None:  # e.g. from a start function, before any hook
            return ffi.new_trap(f"host call {name} outside a hook")
        try:
            if sandbox.in_host_call:
                raise AbiViolation(f"{name} called while the host was in another host call (re-entrant)")
            sandbox.in_host_call = True
            try:
                memory = sandbox.memory(ffi.caller_context(caller))
                args = [getattr(slots[i], field) for i, field in enumerate(fields)]
                result = func(sandbox, memory, *args)
                if returns:
                    slots[0].u32 = result
            finally:
                sandbox.in_host_call = False
            return 0
        except (ffi.WasmTrap, ffi.WasmError) as trap:  # cabi_realloc, called for this host call, stopped
            sandbox.fault = sandbox.fault or ProcessorFailure(Cause.TRAP, f"cabi_realloc trapped in {name}: {trap}")
        except ProcessorFailure as failure:
            sandbox.fault = failure
        except Exception as error:  # a host bug must fail this processor, never unwind through C
            guest_log.exception("host call %s failed", name)
            sandbox.fault = ProcessorFailure(Cause.TRAP, f"host error in {name}: {error!r}")
        return ffi.new_trap(str(sandbox.fault))

    return call


# -- where a call is allowed --------------------------------------------------


def _exchange(sandbox: Sandbox, call: str):  # noqa: ANN202 - Exchange; kept local to the checks
    if sandbox.hook is None or sandbox.hook is Hook.INIT or sandbox.exchange is None:
        raise AbiViolation(f"{call} called during init: there is no request yet")
    return sandbox.exchange


def _readable_headers(sandbox: Sandbox, message: int, call: str) -> CIMultiDict[str] | None:
    exchange = _exchange(sandbox, call)
    which = enum_value(Message, message, call)
    return exchange.request_headers if which is Message.REQUEST else exchange.response_headers


def _writable_headers(sandbox: Sandbox, message: int, call: str) -> CIMultiDict[str]:
    exchange = _exchange(sandbox, call)
    if enum_value(Message, message, call) is Message.REQUEST:
        if exchange.request_sent:
            raise AbiViolation(f"{call}: the request headers were already sent upstream")
        return exchange.request_headers
    if exchange.response_headers is None or sandbox.hook not in _RESPONSE_HOOKS:
        raise AbiViolation(f"{call}: there is no response in {sandbox.hook.phase}")
    if exchange.response_sent:
        raise AbiViolation(f"{call}: the response headers were already sent to the client")
    return exchange.response_headers


def _bounded(headers: CIMultiDict[str], call: str) -> None:
    if header_bytes(headers) > MAX_HEADER_BYTES:
        raise ProcessorFailure(Cause.MEMORY_LIMIT, f"{call}: headers would pass {MAX_HEADER_BYTES} bytes")


# -- the calls ------------------------------------------------------------------


@host_call("get-request-info", "i")
def get_request_info(sandbox: Sandbox, memory: GuestMemory, retptr: int) -> None:
    facts = _exchange(sandbox, "get-request-info").facts
    fields = (facts.method, facts.path, facts.query, facts.request_id, facts.route, facts.tenant, facts.client_address)
    flat: list[int] = []
    for value in fields:
        flat.extend(memory.lower_string(value, "get-request-info"))
    memory.write_u32s(retptr, tuple(flat), "get-request-info's return area")


@host_call("get-header", "iiii")
def get_header(sandbox: Sandbox, memory: GuestMemory, message: int, name_ptr: int, name_len: int, retptr: int) -> None:
    headers = _readable_headers(sandbox, message, "get-header")
    name = memory.string(name_ptr, name_len, "get-header's name")
    value = headers.get(name) if headers is not None else None
    if value is None:
        memory.write_u32s(retptr, (0,), "get-header's return area")
    else:
        memory.write_u32s(retptr, (1, *memory.lower_string(value, "get-header")), "get-header's return area")


@host_call("get-headers", "ii")
def get_headers(sandbox: Sandbox, memory: GuestMemory, message: int, retptr: int) -> None:
    headers = _readable_headers(sandbox, message, "get-headers")
    encoded = encode_headers(list(headers.items()) if headers is not None else [])
    memory.write_u32s(retptr, (memory.alloc(encoded, "get-headers"), len(encoded)), "get-headers' return area")


def _header_args(memory: GuestMemory, call: str, name: tuple[int, int], value: tuple[int, int]) -> tuple[str, str]:
    name_s = memory.string(*name, f"{call}'s name")
    value_s = memory.string(*value, f"{call}'s value")
    check_header(name_s, value_s)
    return name_s, value_s


@host_call("set-header", "iiiii")
def set_header(sandbox: Sandbox, memory: GuestMemory, message: int, np: int, nl: int, vp: int, vl: int) -> None:
    headers = _writable_headers(sandbox, message, "set-header")
    name, value = _header_args(memory, "set-header", (np, nl), (vp, vl))
    headers[name] = value
    _bounded(headers, "set-header")


@host_call("add-header", "iiiii")
def add_header(sandbox: Sandbox, memory: GuestMemory, message: int, np: int, nl: int, vp: int, vl: int) -> None:
    headers = _writable_headers(sandbox, message, "add-header")
    name, value = _header_args(memory, "add-header", (np, nl), (vp, vl))
    headers.add(name, value)
    _bounded(headers, "add-header")


@host_call("remove-header", "iii")
def remove_header(sandbox: Sandbox, memory: GuestMemory, message: int, name_ptr: int, name_len: int) -> None:
    headers = _writable_headers(sandbox, message, "remove-header")
    headers.popall(memory.string(name_ptr, name_len, "remove-header's name"), None)


@host_call("get-status", "", returns=True)
def get_status(sandbox: Sandbox, memory: GuestMemory) -> int:
    return _exchange(sandbox, "get-status").response_status


def _check_status(status: int, call: str) -> None:
    if not 100 <= status <= 599:
        raise AbiViolation(f"{call}: {status} is not an HTTP status")


@host_call("set-status", "i")
def set_status(sandbox: Sandbox, memory: GuestMemory, status: int) -> None:
    _writable_headers(sandbox, Message.RESPONSE, "set-status")
    _check_status(status, "set-status")
    sandbox.exchange.response_status = status


@host_call("replace-body", "ii")
def replace_body(sandbox: Sandbox, memory: GuestMemory, ptr: int, length: int) -> None:
    if sandbox.hook not in _BODY_HOOKS:
        raise AbiViolation(f"replace-body called in {sandbox.hook.phase}, which has no body")
    sandbox.replaced_body = memory.read(ptr, length, "replace-body's body")


@host_call("send-response", "iiiii")
def send_response(sandbox: Sandbox, memory: GuestMemory, status: int, hp: int, hn: int, bp: int, bl: int) -> None:
    exchange = _exchange(sandbox, "send-response")
    if sandbox.hook is Hook.DONE or (sandbox.hook in _RESPONSE_HOOKS and exchange.response_sent):
        raise AbiViolation(f"send-response called in {sandbox.hook.phase}, after the response started")
    _check_status(status, "send-response")
    headers = _header_list(memory, hp, hn, "send-response")
    sandbox.local_response = LocalResponse(status, headers, memory.read(bp, bl, "send-response's body"))


def _header_list(memory: GuestMemory, ptr: int, count: int, call: str) -> list[tuple[str, str]]:
    """A lowered ``list<tuple<string, string>>`` of headers, each checked, bounded in all."""
    flat = struct.unpack(f"<{count * 4}I", memory.read(ptr, count * 16, f"{call}'s headers"))
    headers = [_header_args(memory, call, flat[i : i + 2], flat[i + 2 : i + 4]) for i in range(0, len(flat), 4)]
    if sum(len(n) + len(v) for n, v in headers) > MAX_HEADER_BYTES:
        raise ProcessorFailure(Cause.MEMORY_LIMIT, f"{call}: headers pass {MAX_HEADER_BYTES} bytes")
    return headers


@host_call("set-upstream", "iii")
def set_upstream(sandbox: Sandbox, memory: GuestMemory, ptr: int, length: int, retptr: int) -> None:
    exchange = _exchange(sandbox, "set-upstream")
    if exchange.request_sent or sandbox.hook not in _REQUEST_HOOKS:
        raise AbiViolation(f"set-upstream called in {sandbox.hook.phase}, after the upstream request started")
    url = memory.string(ptr, length, "set-upstream's url")
    problem = _upstream_problem(url)
    if problem is None:
        exchange.upstream = url
        memory.write_u32s(retptr, (0,), "set-upstream's return area")
    else:
        memory.write_u32s(retptr, (1, *memory.lower_string(problem, "set-upstream")), "set-upstream's return area")


def _upstream_problem(url: str) -> str | None:
    try:
        parsed = yarl.URL(url)
    except ValueError as error:
        return f"{url!r} is not a URL: {error}"
    if parsed.scheme not in ("http", "https") or not parsed.host:
        return f"{url!r} is not an absolute http or https URL"
    return None


@host_call("call", "iiiiiiiiii")
def call(
    sandbox: Sandbox,
    memory: GuestMemory,
    mp: int,
    ml: int,
    up: int,
    ul: int,
    hp: int,
    hn: int,
    bp: int,
    bl: int,
    timeout_ms: int,
    retptr: int,
) -> None:
    _exchange(sandbox, "call")
    if sandbox.hook is Hook.DONE:
        raise AbiViolation("call in done: nothing is left to wait for it")
    method = memory.string(mp, ml, "call's method")
    url = memory.string(up, ul, "call's url")
    headers = _header_list(memory, hp, hn, "call")
    started = sandbox.calls.start(method, url, headers, memory.read(bp, bl, "call's body"), timeout_ms)
    sandbox.check_held_bytes()
    if isinstance(started, int):
        memory.write_u32s(retptr, (0, started), "call's result")
    else:
        memory.write_u32s(retptr, (1, *memory.lower_string(started, "call")), "call's result")


@host_call("call-result", "ii")
def call_result(sandbox: Sandbox, memory: GuestMemory, handle: int, retptr: int) -> None:
    _exchange(sandbox, "call-result")
    call = sandbox.calls.finished(handle)
    if call is None:
        raise AbiViolation(f"call-result: no finished call has handle {handle}")
    if isinstance(call.result, CallResponse):
        headers = encode_headers(call.result.headers)
        hp, bp = memory.alloc(headers, "call-result's headers"), memory.alloc(call.result.body, "call-result's body")
        # result<call-response, call-error>: tag, then status (u16) and two lists at offsets 4, 8, 16
        area = struct.pack("<BxxxHxxIIII", 0, call.result.status, hp, len(headers), bp, len(call.result.body))
    else:
        area = struct.pack("<BxxxBxxx", 1, call.result)
    memory.write_aligned(retptr, area, "call-result's result")


@host_call("set-checkpoint", "ii")
def set_checkpoint(sandbox: Sandbox, memory: GuestMemory, ptr: int, length: int) -> None:
    if length > MAX_CHECKPOINT_BYTES:
        raise ProcessorFailure(Cause.MEMORY_LIMIT, f"set-checkpoint: {length} bytes, more than {MAX_CHECKPOINT_BYTES}")
    sandbox.checkpoint = memory.read(ptr, length, "set-checkpoint's data")


@host_call("get-checkpoint", "i")
def get_checkpoint(sandbox: Sandbox, memory: GuestMemory, retptr: int) -> None:
    data = sandbox.checkpoint
    if data is None:
        memory.write_u32s(retptr, (0,), "get-checkpoint's return area")
    else:
        memory.write_u32s(retptr, (1, memory.alloc(data, "get-checkpoint"), len(data)), "get-checkpoint's return area")


def _state(sandbox: Sandbox, call: str, key_ptr: int, key_len: int, memory: GuestMemory) -> tuple[State, bytes, float]:
    """The backend, the key in the processor's namespace, and what is left of the phase for the call."""
    facts = _exchange(sandbox, call).facts
    state = sandbox.processor.state
    if state is None:
        raise ProcessorFailure(Cause.STATE_UNAVAILABLE, f"{call}: the gateway has no state backend")
    if key_len > MAX_STATE_KEY_BYTES:
        raise AbiViolation(f"{call}: a {key_len}-byte key is longer than {MAX_STATE_KEY_BYTES} bytes")
    remaining = sandbox.phase_deadline - time.monotonic()
    if remaining <= 0:
        raise ProcessorFailure(Cause.TIMEOUT, f"{call}: the phase's deadline passed")
    # Tenant and processor names cannot hold a NUL: a guest's key cannot reach out of its namespace.
    namespace = f"{facts.tenant}\0{sandbox.processor.name}\0".encode()
    return state, namespace + memory.read(key_ptr, key_len, f"{call}'s key"), remaining


def _unavailable(call: str, error: StateUnavailable) -> ProcessorFailure:
    return ProcessorFailure(Cause.STATE_UNAVAILABLE, f"{call}: {error}")


@host_call("counter-add", "iiIiiIi")
def counter_add(
    sandbox: Sandbox,
    memory: GuestMemory,
    kp: int,
    kl: int,
    delta: int,
    window_ms: int,
    has_limit: int,
    limit: int,
    retptr: int,
) -> None:
    state, key, remaining = _state(sandbox, "counter-add", kp, kl, memory)
    if window_ms == 0:
        raise AbiViolation("counter-add: a window of 0 ms")
    try:
        counter = state.counter_add(key, delta, window_ms, limit if has_limit & 0xFF else None, remaining)
    except StateUnavailable as error:
        raise _unavailable("counter-add", error) from None
    if retptr % 8:
        raise AbiViolation(f"counter-add: return area 0x{retptr:x} is not 8-byte aligned")
    area = struct.pack("<qIB3x", counter.value, min(counter.reset_ms, 0xFFFFFFFF), counter.applied)
    memory.write(retptr, area, "counter-add's result")


@host_call("kv-get", "iii")
def kv_get(sandbox: Sandbox, memory: GuestMemory, kp: int, kl: int, retptr: int) -> None:
    state, key, remaining = _state(sandbox, "kv-get", kp, kl, memory)
    try:
        value = state.kv_get(key, remaining)
    except StateUnavailable as error:
        raise _unavailable("kv-get", error) from None
    if value is None:
        memory.write_u32s(retptr, (0,), "kv-get's result")
    else:
        memory.write_u32s(retptr, (1, memory.alloc(value, "kv-get"), len(value)), "kv-get's result")


@host_call("kv-set", "iiiii")
def kv_set(sandbox: Sandbox, memory: GuestMemory, kp: int, kl: int, vp: int, vl: int, ttl_ms: int) -> None:
    state, key, remaining = _state(sandbox, "kv-set", kp, kl, memory)
    if vl > MAX_STATE_VALUE_BYTES:
        raise AbiViolation(f"kv-set: a {vl}-byte value is larger than {MAX_STATE_VALUE_BYTES} bytes")
    try:
        state.kv_set(key, memory.read(vp, vl, "kv-set's value"), ttl_ms, remaining)
    except StateUnavailable as error:
        raise _unavailable("kv-set", error) from None


@host_call("kv-delete", "ii")
def kv_delete(sandbox: Sandbox, memory: GuestMemory, kp: int, kl: int) -> None:
    state, key, remaining = _state(sandbox, "kv-delete", kp, kl, memory)
    try:
        state.kv_delete(key, remaining)
    except StateUnavailable as error:
        raise _unavailable("kv-delete", error) from None


@host_call("log", "iii")
def log(sandbox: Sandbox, memory: GuestMemory, level: int, ptr: int, length: int) -> None:
    severity = _LOG_LEVELS[enum_value(LogLevel, level, "log")]
    write_guest_log(sandbox, severity, memory.read(ptr, min(length, MAX_LOG_BYTES), "log's message"), length)


def write_guest_log(sandbox: Sandbox, severity: int, text: bytes, length: int) -> None:
    """A line of the guest's in the gateway's log, under its processor's name; bounded per request."""
    sandbox.log_lines += 1
    if sandbox.log_lines > MAX_LOG_LINES:
        GUEST_LOG_DROPPED.labels(sandbox.processor.name).inc()
        return
    request_id = sandbox.exchange.facts.request_id if sandbox.exchange else "-"
    guest_log.log(
        severity,
        "[%s] %s%s",
        sandbox.processor.name,
        text.decode("utf-8", "replace"),
        "" if length <= MAX_LOG_BYTES else " [truncated]",
        extra={"processor": sandbox.processor.name, "request_id": request_id},
    )


@host_call("define-metric", "iiiiiiiiii")
def define_metric(
    sandbox: Sandbox,
    memory: GuestMemory,
    kind: int,
    np: int,
    nl: int,
    hp: int,
    hl: int,
    lp: int,
    lc: int,
    bp: int,
    bc: int,
    retptr: int,
) -> None:
    metric_kind = enum_value(MetricKind, kind, "define-metric")
    name = memory.string(np, nl, "define-metric's name")
    help_text = memory.string(hp, hl, "define-metric's help")
    labels = memory.strings(lp, lc, "define-metric's labels")
    buckets = memory.f64s(bp, bc, "define-metric's buckets")
    try:
        metric = sandbox.processor.guest_metrics.define(metric_kind, name, help_text, labels, buckets)
    except ValueError as error:
        memory.write_u32s(retptr, (1, *memory.lower_string(str(error), "define-metric")), "define-metric's result")
    else:
        memory.write_u32s(retptr, (0, metric), "define-metric's result")


@host_call("record-metric", "iiif")
def record_metric(sandbox: Sandbox, memory: GuestMemory, metric: int, lp: int, lc: int, value: float) -> None:
    labels = memory.strings(lp, lc, "record-metric's label values")
    sandbox.processor.guest_metrics.record(metric, labels, value)
