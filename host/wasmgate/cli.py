"""The ``wasmgate`` command: run, check, config --explain, demo."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .config import Config, ConfigError, explain, load_config


def _load(path: str) -> Config:
    try:
        return load_config(Path(path))
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(1) from None


def _run(args: argparse.Namespace) -> int:
    from . import logs
    from .server import run

    logs.configure()
    config = _load(args.config)
    try:
        run(config, args.workers or os.cpu_count() or 1, Path(args.config))
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


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


def _demo(_: argparse.Namespace) -> int:
    from .demo import main

    return main()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="wasmgate", description="An HTTP gateway running WebAssembly processors.")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run the gateway")
    run.add_argument("--config", required=True, help="the gateway's YAML config file")
    run.add_argument("--workers", type=int, default=0, help="worker processes (default: one per core)")
    run.set_defaults(func=_run)

    check = commands.add_parser("check", help="validate a config and load every module")
    check.add_argument("--config", required=True)
    check.set_defaults(func=_check)

    config = commands.add_parser("config", help="show the effective config")
    config.add_argument("--explain", required=True, metavar="FILE", help="print FILE with every default filled in")
    config.set_defaults(func=_config)

    demo = commands.add_parser("demo", help="run a gateway with example processors and show them at work")
    demo.set_defaults(func=_demo)

    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
