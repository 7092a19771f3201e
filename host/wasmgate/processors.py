"""Configured processors, loaded and checked, ready to be sandboxed per request.

Loading a processor compiles its module and runs its ``init`` once with its
config: a bad module or config is found before any request, and ``init``
tells which phases the processor takes part in.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

from .abi import PHASE_OF_HOOK, Hook
from .config import BodyMode, Config, ConfigError, FailureMode, InstanceMode, ProcessorConfig, SubrequestConfig
from .engine import CompiledModule, ModuleError, Runtime
from .exchange import LocalResponse
from .failures import ProcessorFailure
from .instances import SandboxPool
from .metrics import GuestMetrics, ProcessorMetrics
from .sandbox import Sandbox
from .sources import ModuleCatalog, ModuleNotFound
from .state import State


@dataclass(frozen=True, eq=False)
class Processor:
    name: str
    module: CompiledModule
    config_json: bytes
    hooks: frozenset[Hook]
    """The hooks the processor asked for in ``init``: a set, since flag arithmetic is slow on the request path."""
    buffers: bool
    max_body_bytes: int
    failure_mode: FailureMode
    fallback: LocalResponse | None
    timeouts: dict[Hook, float]
    memory_limit: int
    subrequests: SubrequestConfig
    phase_retries: int
    state: State | None
    """The gateway's shared state (counters, key-value), when it has one."""
    pool: SandboxPool | None
    """Idle instances for ``instances: pooled``; None for fresh instances."""
    guest_metrics: GuestMetrics
    metrics: ProcessorMetrics
    releasing_calls: dict[Hook, int] = dataclasses.field(default_factory=dict)
    """How many more calls of each hook release the GIL, since one of them ran long (see ``sandbox``)."""

    def wants(self, hook: Hook) -> bool:
        return hook in self.hooks


def build_processor(
    runtime: Runtime, spec: ProcessorConfig, module: CompiledModule, state: State | None = None
) -> Processor:
    """Makes a processor and runs its ``init`` once to check it and learn its phases."""
    fallback = None
    if spec.fallback is not None:
        fallback = LocalResponse(spec.fallback.status, list(spec.fallback.headers.items()), spec.fallback.body.encode())
    timeouts = {hook: getattr(spec.timeouts, hook.phase) for hook in Hook}
    draft = Processor(
        name=spec.name,
        module=module,
        config_json=json.dumps(spec.config).encode(),
        hooks=frozenset(),
        buffers=spec.body is BodyMode.BUFFER,
        max_body_bytes=spec.max_body_bytes,
        failure_mode=spec.failure_mode,
        fallback=fallback,
        timeouts=timeouts,
        memory_limit=spec.memory_limit,
        subrequests=spec.subrequests,
        phase_retries=spec.phase_retries,
        state=state,
        pool=SandboxPool(spec.pool) if spec.instances is InstanceMode.POOLED else None,
        guest_metrics=GuestMetrics(spec.name),
        metrics=ProcessorMetrics(spec.name),
    )
    sandbox = Sandbox(runtime, draft)
    try:
        phases = sandbox.init(draft.config_json)
    finally:
        sandbox.close()
    return dataclasses.replace(draft, hooks=frozenset(hook for hook, phase in PHASE_OF_HOOK.items() if phases & phase))


def module_name(reference: str) -> str:
    """What a module is called in messages and metrics: its name, or its repository for oci:// references."""
    return reference.rsplit("/", 1)[-1].split("@")[0].split(":")[0] if reference.startswith("oci://") else reference


def load_processors(
    runtime: Runtime, config: Config, catalog: ModuleCatalog | None = None, state: State | None = None
) -> dict[str, Processor]:
    """Every processor of ``config``; all problems at once, as a ``ConfigError``.

    Modules come from ``catalog`` (by default, the config's module_dirs),
    which keeps the versions of a successful load.
    """
    catalog = catalog or ModuleCatalog.for_config(config)
    problems: list[str] = []
    fetched: dict[str, bytes] = {}
    modules: dict[str, CompiledModule | None] = {}
    processors: dict[str, Processor] = {}
    for i, spec in enumerate(config.processors):
        if spec.module not in modules:
            try:
                fetched[spec.module] = catalog.fetch(spec)
                modules[spec.module] = runtime.compile(module_name(spec.module), fetched[spec.module])
            except (ModuleNotFound, ModuleError) as error:
                problems.append(f"processors[{i}].module: {error}")
                modules[spec.module] = None
        module = modules[spec.module]
        if module is None:
            continue
        if spec.sha256 is not None and module.sha256 != spec.sha256:
            problems.append(f"processors[{i}].sha256: {spec.module} has sha256 {module.sha256}, not the pinned one")
            continue
        try:
            processors[spec.name] = build_processor(runtime, spec, module, state)
        except ProcessorFailure as failure:
            problems.append(f"processors[{i}].config: init of {spec.module} failed: {failure}")
    if problems:
        raise ConfigError("config", problems)
    catalog.keep(fetched)
    return processors
