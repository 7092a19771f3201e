"""The gateway's config file as models: every key, its type, default and checks.

Reading a file and reporting its problems is ``loading``'s job; the units a
value is written in are ``units``'.
"""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Any

import yarl
from pydantic import BaseModel, ConfigDict, Field, IPvAnyNetwork, field_validator, model_validator

from .references import ModuleReference
from .units import Address, Duration, Origin, Size, Upstream


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BodyMode(enum.StrEnum):
    STREAM = "stream"
    BUFFER = "buffer"


class FailureMode(enum.StrEnum):
    FAIL_CLOSED = "fail_closed"
    FAIL_OPEN = "fail_open"
    FALLBACK = "fallback"


class Timeouts(_Model):
    """Per-phase deadlines of one processor: one hook call each."""

    init: Duration = 0.1
    request_headers: Duration = 0.05
    request_body: Duration = 0.2
    response_headers: Duration = 0.05
    response_body: Duration = 0.2
    done: Duration = 0.05


class Fallback(_Model):
    status: int = Field(503, ge=100, le=599)
    headers: dict[str, str] = {}
    body: str = ""


class SubrequestConfig(_Model):
    """What a processor's sub-requests (``host.call``) may do."""

    allow: list[Origin] = []
    """The only origins the processor may call; any other call fails with ``denied``, unsent."""
    max_concurrent: int = Field(4, ge=1, le=256)
    """Calls of one request not yet finished, at most."""
    timeout: Duration = 1.0
    """Per attempt, unless the call sets its own; the phase's deadline bounds it too."""
    max_response_bytes: Size = 1 * 2**20
    retries: int = Field(0, ge=0, le=10)
    """Further attempts after a connect error, a timeout, or a 502, 503 or 504."""
    backoff: Duration = 0.1
    """Before the first retry; doubled before each next one."""


class PullPolicy(enum.StrEnum):
    IF_NOT_PRESENT = "if_not_present"
    ALWAYS = "always"


class LogFormat(enum.StrEnum):
    JSON = "json"
    TEXT = "text"


class InstanceMode(enum.StrEnum):
    FRESH = "fresh"
    POOLED = "pooled"


class PoolConfig(_Model):
    """How a pooled processor keeps and recycles its instances."""

    size: int = Field(32, ge=1, le=1024)
    """Idle initialized instances kept, at most; more are made when all are busy, so size it
    to the requests a worker serves at once."""
    max_requests: int = Field(1000, ge=1)
    """An instance is recycled after serving this many requests."""
    max_memory: Size | None = None
    """An instance whose memory has grown past this is recycled; by default, only a failure recycles it."""


def metric_namespace(processor: str) -> str:
    """The processor's own part of its guest metrics' names: ``wasmgate_guest_<namespace>_<metric>``."""
    return processor.replace("-", "_").replace(".", "_")


class StateQuota(_Model):
    """What one processor may keep in shared state, per tenant: past it, a write fails with state_quota."""

    keys: int = Field(100_000, ge=1)
    """Keys and counters, together."""
    bytes: Size = 64 * 2**20
    """Their keys' and values' bytes (a counter's value counts as 16)."""


class ProcessorConfig(_Model):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=64)
    module: ModuleReference
    sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")
    """Pins the module's content: the sha256 of its .wasm bytes must be this."""
    pull_policy: PullPolicy = PullPolicy.IF_NOT_PRESENT
    """For oci:// tags: if_not_present uses the cached pull; always resolves the tag on every load and poll."""
    config: Any = {}
    body: BodyMode = BodyMode.STREAM
    max_body_bytes: Size = 10 * 2**20
    failure_mode: FailureMode = FailureMode.FAIL_CLOSED
    fallback: Fallback | None = None
    timeouts: Timeouts = Timeouts()
    memory_limit: Size = 16 * 2**20
    subrequests: SubrequestConfig = SubrequestConfig()
    state_quota: StateQuota = StateQuota()
    upstreams: list[Origin] | None = None
    """The only origins the processor may send a request to with set-upstream. By default, when the
    config is loaded, the origins of every route's upstream."""
    instances: InstanceMode = InstanceMode.FRESH
    """fresh: a new instance per request. pooled: initialized instances serve one request
    at a time, again and again (state may persist between requests of this processor)."""
    pool: PoolConfig = PoolConfig()
    init_image: bool = True
    """Fresh instances start from a snapshot of the instance init left, init run once per load. False:
    each instance runs init, for a guest that must draw randomness or read the clock there per request."""
    phase_retries: int = Field(0, ge=0, le=3)
    """Tries of a phase again, on a fresh instance, after a trap, timeout or memory_limit failure;
    the processor's checkpoint carries over. Then the failure mode applies."""

    @model_validator(mode="after")
    def _fallback_given(self) -> ProcessorConfig:
        if self.failure_mode is FailureMode.FALLBACK and self.fallback is None:
            raise ValueError("failure_mode fallback needs a 'fallback' response")
        return self

    @field_validator("memory_limit")
    @classmethod
    def _memory_bounds(cls, value: int) -> int:
        if not 64 * 2**10 <= value <= 2**31:
            raise ValueError("must be between 64KiB and 2GiB")
        return value


class Match(_Model):
    path_prefix: str = "/"
    methods: list[str] | None = None
    headers: dict[str, str] = {}

    @field_validator("path_prefix")
    @classmethod
    def _absolute(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError("must start with '/'")
        return value

    @field_validator("methods")
    @classmethod
    def _upper(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else [method.upper() for method in value]


class RouteConfig(_Model):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=64)
    match: Match = Match()
    upstream: Upstream
    processors: list[str] = []
    tenant: str = Field("", max_length=128)
    """Reported to processors; it namespaces their shared state, so it holds no control character."""
    timeout: Duration = 300.0

    @field_validator("tenant")
    @classmethod
    def _printable(cls, value: str) -> str:
        if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
            raise ValueError("must hold no control characters (it namespaces processors' shared state)")
        return value


class HttpConfig(_Model):
    """How the gateway's listener treats its clients' connections."""

    header_timeout: Duration = 10.0
    """From a connection's start, or a request head's first byte, to the head's end; then a 408 and a close."""
    body_idle_timeout: Duration = 30.0
    """The longest wait for the next bytes of a request body; then a 408 (or a close, once the answer began)."""
    keepalive_timeout: Duration = 30.0
    """An idle connection between requests is closed after this."""
    max_connections: int | None = Field(None, ge=1)
    """Client connections one worker holds at once; one more is answered 503 and closed. By default, half
    the process's open-file limit: the rest is for upstream connections, modules and logs."""
    drain_timeout: Duration = 30.0
    """On SIGTERM, how long requests in flight have to finish before their connections are closed."""
    server_header: str | None = Field("wasmgate", pattern=r"^[!-~]([ -~]{0,126}[!-~])?$")
    """The Server header of a response that has none (an upstream's passes as processors leave it); null: none."""


class UpstreamConfig(_Model):
    connect_timeout: Duration = 5.0
    max_connections: int = Field(1000, ge=1)


class SandboxConfig(_Model):
    threads: int | None = Field(None, exclude=True)
    """No longer used: guests run on the event loop. Accepted, with a warning, so older configs load."""
    max_instances: int = Field(4096, ge=1)
    """Instances alive at once per worker process (the pooling allocator's slots). Each reserves 4 GiB
    of address space and a few memory mappings, so the machine bounds it (``vm.max_map_count``)."""


class OciConfig(_Model):
    """Registries for ``oci://`` modules; credentials come from ORAS_USER/ORAS_PASS or an auth file."""

    plain_http: list[str] = []
    """Registries (host:port) reached over plain HTTP, such as one on loopback."""
    auth_file: Path | None = None
    """A Docker-style auth file; by default ~/.docker/config.json."""
    poll_interval: Duration = 60.0
    """How often tags with pull_policy always are resolved again."""


class StateBackendKind(enum.StrEnum):
    MEMORY = "memory"
    REDIS = "redis"


class StateConfig(_Model):
    """Where processors' shared state lives (counters, key-value): see ``state``."""

    backend: StateBackendKind = StateBackendKind.MEMORY
    url: str = "redis://127.0.0.1:6379/0"
    """For redis."""
    timeout: Duration = 0.5
    """Bounds each call to redis; no call starts past the phase's deadline."""
    path: Path | None = None
    """For memory: the database the gateway's processes share; made at start when not given."""

    @field_validator("url")
    @classmethod
    def _redis_url(cls, value: str) -> str:
        if yarl.URL(value).scheme not in ("redis", "rediss", "unix"):
            raise ValueError(f"{value!r} is not a Redis URL; write for example redis://127.0.0.1:6379/0")
        return value


class Config(_Model):
    listen: Address = "0.0.0.0:8080"
    admin_listen: Address = "127.0.0.1:9901"
    module_dirs: list[Path] = [Path("./modules")]
    cache_dir: Path | None = Path("~/.cache/wasmgate").expanduser()
    processors: list[ProcessorConfig] = []
    routes: list[RouteConfig] = []
    upstream: UpstreamConfig = UpstreamConfig()
    http: HttpConfig = HttpConfig()
    sandbox: SandboxConfig = SandboxConfig()
    oci: OciConfig = OciConfig()
    state: StateConfig = StateConfig()
    log_format: LogFormat = LogFormat.JSON
    """json: JSON Lines, one object per line; text: ``time LEVEL name: message`` lines."""
    trusted_proxies: list[IPvAnyNetwork] = []
    """Clients whose X-Forwarded-*, Forwarded and X-Real-IP headers are passed on; from any other
    client they are dropped and the gateway's own set."""
    max_subrequest_depth: int = Field(3, ge=0, le=32)
    """Requests carrying a ``Wasmgate-Depth`` over this are refused: processors calling
    back into a gateway cannot loop."""

    def processor(self, name: str) -> ProcessorConfig:
        return next(p for p in self.processors if p.name == name)
