"""Reading a config file: one message per problem, each naming the path to the
bad key and why (``processors[0].timeouts.request_body: ...``), before
anything starts; and ``explain``, the effective config with every default
filled in, in the same units a user writes."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from .models import Config

log = logging.getLogger("wasmgate.config")


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
    for section, names in (
        ("processors", [p.name for p in config.processors]),
        ("routes", [r.name for r in config.routes]),
    ):
        seen: set[str] = set()
        for i, name in enumerate(names):
            if name in seen:
                problems.append(f"{section}[{i}].name: {name!r} is used twice")
            seen.add(name)
    declared = {p.name for p in config.processors}
    for i, route in enumerate(config.routes):
        for j, name in enumerate(route.processors):
            if name not in declared:
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
    if config.sandbox.threads is not None:
        log.warning("%s: sandbox.threads is ignored: guests run on the event loop (remove the key)", source)
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
