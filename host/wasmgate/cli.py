"""The ``wasmgate`` command: run, check, config --explain, demo."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from importlib.metadata import version
from pathlib import Path

from pydantic import TypeAdapter, ValidationError

from .config import Address, Config, ConfigError, LogFormat, explain, load_config


def _load(path: str) -> Config:
    try:
        return load_config(Path(path))
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(1) from None


def _run(args: argparse.Namespace) -> int:
    from . import logs
    from .server import run

    config = _load(args.config)
    overrides = {key: value for key, value in (("listen", args.listen), ("admin_listen", args.admin_listen)) if value}
    config = config.model_copy(update=overrides)
    logs.configure(json_lines=config.log_format is LogFormat.JSON)
    try:
        return run(config, args.workers or len(os.sched_getaffinity(0)), Path(args.config))
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


def _check(args: argparse.Namespace) -> int:
    from .server import check

    config = _load(args.config)
    try:
        check(config)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"{args.config}: ok ({len(config.processors)} processors, {len(config.routes)} routes)")
    return 0


def _config(args: argparse.Namespace) -> int:
    print(explain(_load(args.explain)), end="")
    return 0


def _push(args: argparse.Namespace) -> int:
    from .sources import OciError, OciSource

    try:
        with tempfile.TemporaryDirectory() as cache:  # pushing caches nothing
            manifest, module = OciSource(Path(cache), args.plain_http, args.auth_file).push(
                Path(args.file), args.reference
            )
    except (OciError, OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"pushed {args.file} to {args.reference}")
    print(f"  manifest {manifest}")
    print(f"  module   {module} (pin it with sha256: {module.removeprefix('sha256:')})")
    return 0


def _demo(_: argparse.Namespace) -> int:
    from .demo import main

    return main()


def _address(value: str) -> str:
    try:
        return TypeAdapter(Address).validate_python(value)
    except ValidationError as error:
        raise argparse.ArgumentTypeError(error.errors()[0]["msg"].removeprefix("Value error, ")) from None


def _workers(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of worker processes (1 or more)")
    return int(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="wasmgate", description="An HTTP gateway running WebAssembly processors.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {version('wasmgate')}")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser(
        "run",
        help="run the gateway",
        description="Runs the gateway. It reloads its config and modules live when they change, and on SIGHUP.",
    )
    run.add_argument("--config", required=True, help="the gateway's YAML config file")
    run.add_argument(
        "--workers", type=_workers, default=0, help="worker processes (default: one per core this process may use)"
    )
    run.add_argument("--listen", type=_address, metavar="HOST:PORT", help="serve here instead of the config's listen")
    run.add_argument(
        "--admin-listen", type=_address, metavar="HOST:PORT", help="the admin listener instead of admin_listen"
    )
    run.set_defaults(func=_run)

    check = commands.add_parser("check", help="validate a config and load every module")
    check.add_argument("--config", required=True, help="the gateway's YAML config file")
    check.set_defaults(func=_check)

    config = commands.add_parser("config", help="show the effective config")
    config.add_argument("--explain", required=True, metavar="FILE", help="print FILE with every default filled in")
    config.set_defaults(func=_config)

    push = commands.add_parser("push", help="publish a module to an OCI registry (CNCF Wasm artifact layout)")
    push.add_argument("file", help="the module's .wasm file")
    push.add_argument("reference", help="oci://REGISTRY/REPO:TAG")
    push.add_argument("--plain-http", action="append", default=[], metavar="REGISTRY", help="reach REGISTRY over http")
    push.add_argument("--auth-file", type=Path, help="a Docker-style auth file (default ~/.docker/config.json)")
    push.set_defaults(func=_push)

    demo = commands.add_parser("demo", help="run a gateway with example processors and show them at work")
    demo.set_defaults(func=_demo)

    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
