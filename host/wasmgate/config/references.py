"""Where a processor's module comes from, as a config names it: ``NAME`` of
``NAME.wasm`` in ``module_dirs``, or an OCI reference ``oci://REGISTRY/REPO:TAG``
(or ``@sha256:DIGEST``, the manifest's digest)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BeforeValidator

_REFERENCE = re.compile(
    r"oci://(?P<name>[^@:\s]+(?::\d+)?/[^@:\s]+)(?::(?P<tag>[\w][\w.-]{0,127})|@(?P<digest>sha256:[0-9a-f]{64}))?"
)


@dataclass(frozen=True)
class Reference:
    registry: str
    repository: str
    tag: str | None
    digest: str | None

    @property
    def target(self) -> str:
        """As oras writes it: ``REGISTRY/REPO:TAG`` or ``REGISTRY/REPO@DIGEST``."""
        return f"{self.registry}/{self.repository}" + (f"@{self.digest}" if self.digest else f":{self.tag}")


def parse_reference(reference: str) -> Reference:
    match = _REFERENCE.fullmatch(reference)
    if match is None:
        raise ValueError(f"{reference!r} is not an OCI reference; write oci://REGISTRY/REPO:TAG or @sha256:DIGEST")
    registry, _, repository = match["name"].partition("/")
    return Reference(registry, repository, match["tag"] or (None if match["digest"] else "latest"), match["digest"])


def _module_reference(value: Any) -> str:
    """A module name (``NAME.wasm`` in module_dirs) or an ``oci://`` reference."""
    text = str(value)
    if text.startswith("oci://"):
        parse_reference(text)
    elif not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", text):
        raise ValueError(f"{text!r} is neither a module name (NAME of NAME.wasm) nor an oci:// reference")
    return text


ModuleReference = Annotated[str, BeforeValidator(_module_reference)]


def module_name(reference: str) -> str:
    """What a module is called in messages and metrics: its name, or its repository for oci:// references."""
    return reference.rsplit("/", 1)[-1].split("@")[0].split(":")[0] if reference.startswith("oci://") else reference
