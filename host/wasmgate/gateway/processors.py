"""Configured processors, loaded and checked, ready to be sandboxed per request.

Loading a processor compiles its module and runs its ``init`` once with its
config: a bad module or config is found before any request, and ``init``
tells which phases the processor takes part in. The instance ``init`` left
is then its *init image* (see the core's ``image``): fresh instances start
from that memory, with ``init`` already run and nothing of any request in
it; except a retry's instance, which runs ``init`` to see the checkpoint,
and the instances of a module that cannot be snapshotted or of a processor
with ``init_image: false``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from ..config import (
    BodyMode,
    Config,
    ConfigError,
    FailureMode,
    InstanceMode,
    ProcessorConfig,
    SubrequestConfig,
    module_name,
)
from ..metrics import GuestMetrics, ProcessorMetrics
from ..runtime import PHASE_OF_HOOK, CompiledModule, Guest, Hook, ModuleError, ProcessorFailure, Runtime, Sandbox
from ..sources import Fetched, ModuleCatalog, ModuleNotFound
from ..state import Quota, State
from .exchange import LocalResponse
from .host import ProcessorHost
from .instances import SandboxPool

MAX_IMAGE_BYTES = 64 * 2**20
"""Past this much memory after init, a processor gets no init image: making one copies its memory a few times."""

PREPARED = 8
"""Instances of a fresh-instance processor kept started ahead of need: a request takes one instead of
making its own, and the core makes the next on a thread of its own (see the core's ``janitor``)."""


@dataclass(frozen=True, eq=False)
class Processor:
    name: str
    module: CompiledModule
    guest: Guest
    """The core's view of the processor: module, config and limits."""
    host: ProcessorHost
    hooks: frozenset[Hook]
    """The hooks the processor asked for in ``init``: a set, since flag arithmetic is slow on the request path."""
    buffers: bool
    max_body_bytes: int
    failure_mode: FailureMode
    fallback: LocalResponse | None
    memory_limit: int
    subrequests: SubrequestConfig
    phase_retries: int
    pool: SandboxPool | None
    """Idle instances for ``instances: pooled``; None for fresh instances."""
    metrics: ProcessorMetrics

    def wants(self, hook: Hook) -> bool:
        return hook in self.hooks

    def sandbox(self, runtime: Runtime) -> Sandbox:
        """A new, unstarted instance."""
        return Sandbox(runtime, self.guest, self.host)

    def prepared_sandbox(self, runtime: Runtime) -> Sandbox | None:
        """A new instance started ahead of need, if one is ready."""
        return Sandbox.prepared(runtime, self.guest, self.host)


def build_processor(
    runtime: Runtime,
    spec: ProcessorConfig,
    module: CompiledModule,
    state: State | None = None,
    serving: bool = True,
) -> Processor:
    """Makes a processor and runs its ``init`` once to check it and learn its phases.

    One to serve (``serving``) gets its init image and, with fresh instances, instances started ahead
    of need; one that is only checked gets neither (nor does ``bench/runtime.py``'s "no image" case).
    """
    fallback = None
    if spec.fallback is not None:
        fallback = LocalResponse(spec.fallback.status, list(spec.fallback.headers.items()), spec.fallback.body.encode())
    calls = spec.subrequests
    guest = Guest(
        runtime.engine,
        spec.name,
        module.core,
        json.dumps(spec.config).encode(),
        [getattr(spec.timeouts, hook.phase) for hook in Hook],
        spec.memory_limit,
        list(calls.allow),
        spec.upstreams or [],  # a processor made outside a config chooses none
        calls.max_concurrent,
        calls.timeout,
        PREPARED if serving and spec.instances is InstanceMode.FRESH else 0,
    )
    quota = Quota(spec.state_quota.keys, spec.state_quota.bytes)
    host = ProcessorHost(spec.name, state, GuestMetrics(spec.name), quota)
    sandbox = Sandbox(runtime, guest, host)
    try:
        phases = sandbox.start_blocking()
        if serving and spec.init_image and sandbox.memory_size <= MAX_IMAGE_BYTES:
            # What the image depends on: its processor (never shared), config and limit, and the phases
            # and metric numbers init chose, which its memory holds.
            made_from = json.dumps([spec.name, spec.config, spec.memory_limit, phases, guest.metric_names()])
            image = runtime.init_image(module, made_from.encode(), sandbox.init_image)
            if image is not None:
                guest.set_image(image, phases)
    finally:
        sandbox.close()
    guest.fill()
    return Processor(
        name=spec.name,
        module=module,
        guest=guest,
        host=host,
        hooks=frozenset(hook for hook, phase in PHASE_OF_HOOK.items() if phases & phase),
        buffers=spec.body is BodyMode.BUFFER,
        max_body_bytes=spec.max_body_bytes,
        failure_mode=spec.failure_mode,
        fallback=fallback,
        memory_limit=spec.memory_limit,
        subrequests=spec.subrequests,
        phase_retries=spec.phase_retries,
        pool=SandboxPool(spec.pool) if spec.instances is InstanceMode.POOLED else None,
        metrics=ProcessorMetrics(spec.name),
    )


def load_processors(
    runtime: Runtime,
    config: Config,
    catalog: ModuleCatalog | None = None,
    state: State | None = None,
    serving: bool = True,
) -> dict[str, Processor]:
    """Every processor of ``config``; all problems at once, as a ``ConfigError``.

    Modules come from ``catalog`` (by default, the config's module_dirs),
    which keeps the versions of a successful load. ``serving`` is as for
    ``build_processor``.
    """
    catalog = catalog or ModuleCatalog.for_config(config)
    problems: list[str] = []
    fetched: dict[str, Fetched] = {}
    modules: dict[str, CompiledModule | None] = {}
    processors: dict[str, Processor] = {}
    for i, spec in enumerate(config.processors):
        if spec.module not in modules:
            modules[spec.module] = None
            try:
                found = catalog.fetch(spec)
            except ModuleNotFound as error:
                problems.append(f"processors[{i}].module: {error}")
                continue
            fetched[spec.module] = found
            try:
                modules[spec.module] = runtime.compile(module_name(spec.module), found.wasm)
            except ModuleError as error:
                problems.append(f"processors[{i}].module: {found.source}: {error}")
        module = modules[spec.module]
        if module is None:
            continue
        if spec.sha256 is not None and module.sha256 != spec.sha256:
            problems.append(f"processors[{i}].sha256: {spec.module} has sha256 {module.sha256}, not the pinned one")
            continue
        try:
            processors[spec.name] = build_processor(runtime, spec, module, state, serving)
        except ProcessorFailure as failure:
            problems.append(f"processors[{i}].config: init of {spec.module} failed: {failure}")
    if problems:
        raise ConfigError("config", problems)
    catalog.keep(fetched)
    return processors
