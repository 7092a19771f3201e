"""The gateway's config: its models (``models``), the units values are written
in (``units``), where modules come from (``references``), and reading and
checking a file (``loading``)."""

from .loading import ConfigError, explain, load_config, parse_config
from .models import (
    BodyMode,
    Config,
    FailureMode,
    HttpConfig,
    InstanceMode,
    LogFormat,
    PoolConfig,
    ProcessorConfig,
    PullPolicy,
    RouteConfig,
    StateBackendKind,
    StateConfig,
    StateQuota,
    SubrequestConfig,
    UpstreamConfig,
    metric_namespace,
)
from .references import Reference, module_name, parse_reference
from .units import Address, split_address

__all__ = [
    "Address",
    "BodyMode",
    "Config",
    "ConfigError",
    "FailureMode",
    "HttpConfig",
    "InstanceMode",
    "LogFormat",
    "PoolConfig",
    "ProcessorConfig",
    "PullPolicy",
    "Reference",
    "RouteConfig",
    "StateBackendKind",
    "StateConfig",
    "StateQuota",
    "SubrequestConfig",
    "UpstreamConfig",
    "explain",
    "load_config",
    "metric_namespace",
    "module_name",
    "parse_config",
    "parse_reference",
    "split_address",
]
