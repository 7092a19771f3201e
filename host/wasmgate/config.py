"""The gateway's config file: its models, units, defaults and validation.

A wrong file gets one message per problem, each naming the path to the bad
key and why (``processors[0].timeouts.request_body: ...``), before
anything starts. ``wasmgate config --explain`` prints the effective config
with every default filled in, in the same units a user writes.
"""

from __future__ import annotations

import enum
import re
from pathlib import Path
from typing import Annotated, Any

import yaml
import yarl
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    field_validator,
    model_validator,
)

from .oci import parse_reference

_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(us|µs|ms|s|m|h)?\s*")
_DURATION_UNITS = {"us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(B|KB|KiB|MB|MiB|GB|GiB)?\s*")
_SIZE_UNITS = {None: 1, "B": 1, "KB": 10**3, "KiB": 2**10, "MB": 10**6, "MiB": 2**20, "GB": 10**9, "GiB": 2**30}


def _parse_duration(value: Any) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        match = _DURATION.fullmatch(str(value))
        if not match:
            raise ValueError(f"{value!r} is not a duration; write for example 50ms, 2s or 1m")
        seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2)]
    if seconds <= 0:
        raise ValueError("a duration must be positive")
    return seconds


def _format_duration(seconds: float) -> str:
    for unit, scale in (("h", 3600.0), ("m", 60.0), ("s", 1.0), ("ms", 1e-3)):
        if seconds >= scale and (seconds / scale) == round(seconds / scale, 3):
            return f"{seconds / scale:g}{unit}"
    return f"{seconds * 1e6:g}us"


def _parse_size(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        size = value
    else:
        match = _SIZE.fullmatch(str(value))
        if not match:
            raise ValueError(f"{value!r} is not a size; write for example 512KiB or 16MiB")
        size = int(float(match.group(1)) * _SIZE_UNITS[match.group(2)])
    if size <= 0:
        raise ValueError("a size must be positive")
    return size


def _format_size(size: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if size >= scale and size % scale == 0:
            return f"{size // scale}{unit}"
    return f"{size}B"


Duration = Annotated[float, BeforeValidator(_parse_duration), PlainSerializer(_format_duration)]
Size = Annotated[int, BeforeValidator(_parse_size), PlainSerializer(_format_size)]


def _parse_address(value: Any) -> str:
    host, sep, port = str(value).rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{value!r} is not an address; write host:port, for example 127.0.0.1:8080")
    return str(value)


Address = Annotated[str, BeforeValidator(_parse_address)]


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def _check_upstream(value: str) -> str:
    url = yarl.URL(value)
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError(f"{value!r} is not an absolute http or https URL")
    return value


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


def _origin(value: Any) -> str:
    """``scheme://host[:port]``, normalized: lower case, default port dropped."""
    url = yarl.URL(str(value))
    if url.scheme not in ("http", "https") or not url.host or url.raw_path not in ("", "/") or url.query_string:
        raise ValueError(f"{value!r} is not an origin; write scheme://host[:port], for example http://127.0.0.1:9000")
    return str(url.origin())


Origin = Annotated[str, BeforeValidator(_origin)]


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


def _module_reference(value: Any) -> str:
    """A module name (``NAME.wasm`` in module_dirs) or an ``oci://`` reference."""
    text = str(value)
    if text.startswith("oci://"):
        parse_reference(text)
    elif not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", text):
        raise ValueError(f"{text!r} is neither a module name (NAME of NAME.wasm) nor an oci:// reference")
    return text


ModuleReference = Annotated[str, BeforeValidator(_module_reference)]


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
    instances: InstanceMode = InstanceMode.FRESH
    """fresh: a new instance per request. pooled: initialized instances serve one request
    at a time, again and again (state may persist between requests of this processor)."""
    pool: PoolConfig = PoolConfig()
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
    upstream: Annotated[str, BeforeValidator(_check_upstream)]
    processors: list[str] = []
    tenant: str = ""
    timeout: Duration = 300.0


class UpstreamConfig(_Model):
    connect_timeout: Duration = 5.0
    max_connections: int = Field(1000, ge=1)


class SandboxConfig(_Model):
    threads: int = Field(4, ge=1, le=256)
    """Threads running guest code, per worker process."""
    max_instances: int = Field(10_000, ge=1)
    """Instances alive at once per worker process (the pooling allocator's slots)."""


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
    sandbox: SandboxConfig = SandboxConfig()
    oci: OciConfig = OciConfig()
    state: StateConfig = StateConfig()
    max_subrequest_depth: int = Field(3, ge=0, le=32)
    """Requests carrying a ``Wasmgate-Depth`` over this are refused: processors calling
    back into a gateway cannot loop."""

    def processor(self, name: str) -> ProcessorConfig:
        return next(p for p in self.processors if p.name == name)


class ConfigError(Exception):
    """Every problem found in a config file, one per line."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: {len(problems)} problem(s)\n" + "\n".join(f"  {p}" for p in problems))


def _path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}" if out else str(part)
    return out or "(top level)"


_MESSAGES = {
    "extra_forbidden": "unknown key",
    "missing": "required key is missing",
}


def _problems(error: ValidationError) -> list[str]:
    problems = []
    for item in error.errors():
        # pydantic adds the failing validator's name to the location of Annotated types
        loc = tuple(part for part in item["loc"] if not str(part).startswith("function-"))
        message = _MESSAGES.get(item["type"], item["msg"].removeprefix("Value error, "))
        problems.append(f"{_path(loc)}: {message}")
    return problems


def _references(config: Config) -> list[str]:
    """Problems across sections, which pydantic checks one model at a time."""
    problems = []
    for section, items in (("processors", config.processors), ("routes", config.routes)):
        seen: set[str] = set()
        for i, item in enumerate(items):
            if item.name in seen:
                problems.append(f"{section}[{i}].name: {item.name!r} is used twice")
            seen.add(item.name)
    names = {p.name for p in config.processors}
    for i, route in enumerate(config.routes):
        for j, name in enumerate(route.processors):
            if name not in names:
                problems.append(f"routes[{i}].processors[{j}]: no processor is named {name!r}")
    return problems


def parse_config(data: Any, source: str = "config", base_dir: Path | None = None) -> Config:
    """Validates parsed YAML; relative paths are taken from ``base_dir``."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(source, ["(top level): must be a mapping of keys"])
    try:
        config = Config.model_validate(data)
    except ValidationError as error:
        raise ConfigError(source, _problems(error)) from None
    problems = _references(config)
    if problems:
        raise ConfigError(source, problems)
    if base_dir is not None:
        config = config.model_copy(update={"module_dirs": [(base_dir / d).expanduser() for d in config.module_dirs]})
    return config


def load_config(path: Path) -> Config:
    try:
        text = path.read_text()
    except OSError as error:
        raise ConfigError(str(path), [f"cannot read the file: {error.strerror}"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "(file)"
        raise ConfigError(str(path), [f"{where}: not valid YAML: {getattr(error, 'problem', error)}"]) from None
    return parse_config(data, str(path), path.parent)


def explain(config: Config) -> str:
    """The effective config as YAML, every default filled in."""
    data = config.model_dump(mode="json")
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False)
