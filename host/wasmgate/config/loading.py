"""Reading a config file: one message per problem, each naming the path to the
bad key and why (``processors[0].timeouts.request_body: ...``), before
anything starts; and ``explain``, the effective config with every default
filled in, in the same units a user writes."""

from __future__ import annotations

import logging
from collections.abc import Hashable
from pathlib import Path
from typing import Any

import yaml
import yarl
from pydantic import ValidationError

from .models import Config, metric_namespace

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
    namespaces: dict[str, str] = {}
    for i, processor in enumerate(config.processors):
        other = namespaces.setdefault(metric_namespace(processor.name), processor.name)
        if other != processor.name:
            problems.append(
                f"processors[{i}].name: {processor.name!r} and {other!r} would name their metrics alike"
                f" (wasmgate_guest_{metric_namespace(other)}_...); rename one"
            )
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
    return _default_upstreams(config)


def _default_upstreams(config: Config) -> Config:
    """Each processor with no ``upstreams`` may choose those the config's routes name."""
    if all(p.upstreams is not None for p in config.processors):
        return config
    named = sorted({str(yarl.URL(route.upstream).origin()) for route in config.routes})
    processors = [p.model_copy(update={"upstreams": named}) if p.upstreams is None else p for p in config.processors]
    return config.model_copy(update={"processors": processors})


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, but a key given twice in one mapping is an error instead of the last one winning
    (a second ``processors:`` would silently replace the first)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Hashable] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, Hashable):
                continue  # the safe loader refuses it next, as it always has
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while reading a mapping", node.start_mark, f"the key {key!r} is given twice", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep)


def _mark(mark: yaml.Mark) -> str:
    return f"line {mark.line + 1}, column {mark.column + 1}"


def load_config(path: Path) -> Config:
    try:
        text = path.read_text()
    except OSError as error:
        raise ConfigError(str(path), [f"cannot read the file: {error.strerror}"]) from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # a safe loader
    except yaml.MarkedYAMLError as error:
        where = _mark(error.problem_mark) if error.problem_mark else "(file)"
        # The construct left open, where it opened: what a user looks for first.
        opened = f" ({error.context} at {_mark(error.context_mark)})" if error.context and error.context_mark else ""
        raise ConfigError(str(path), [f"{where}: not valid YAML: {error.problem}{opened}"]) from None
    except yaml.YAMLError as error:
        raise ConfigError(str(path), [f"not valid YAML: {error}"]) from None
    if data is None:
        raise ConfigError(str(path), ["(top level): the file is empty; a config has at least its routes"])
    return parse_config(data, str(path), path.parent)


def explain(config: Config) -> str:
    """The effective config as YAML, every default filled in."""
    data = config.model_dump(mode="json")
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False)
