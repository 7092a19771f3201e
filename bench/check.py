"""``wasmgate check`` run again and again on a busy machine: how many runs crash.

    python bench/check.py [--runs 200] [--config examples/gateway.yaml]

Each run starts a process that makes an engine (its ticker and janitor
threads), loads every module of the config (from the compile cache after
the first run), runs each processor's ``init`` and exits: the exit is where
an engine's threads and the interpreter's shutdown meet. Meanwhile one
process per core spins, so the runs' threads are preempted at every point.
Every run must exit 0; the figures are the exit codes seen and the time a
run took.
"""

from __future__ import annotations

import argparse
import collections
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from loopback import BENCH

BUSY = "while True: pass"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--config", type=Path, default=BENCH.parent / "examples" / "gateway.yaml")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="wasmgate-bench-") as directory:
        config = yaml.safe_load(args.config.read_text())
        config["module_dirs"] = [str((args.config.parent / path).resolve()) for path in config["module_dirs"]]
        config["cache_dir"] = str(Path(directory) / "cache")
        path = Path(directory) / "gateway.yaml"
        path.write_text(yaml.safe_dump(config))

        burners = [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(os.cpu_count() or 1)]
        codes: collections.Counter[int] = collections.Counter()
        seconds, failures = [], []
        try:
            for _ in range(args.runs):
                started = time.monotonic()
                run = subprocess.run(
                    [sys.executable, "-m", "wasmgate", "check", "--config", str(path)],
                    capture_output=True,
                    text=True,
                    timeout=120,
                )
                seconds.append(time.monotonic() - started)
                codes[run.returncode] += 1
                if run.returncode != 0:
                    failures.append(run.stderr.strip().splitlines()[-3:])
        finally:
            for burner in burners:
                burner.kill()
                burner.wait()
    print(f"wasmgate check --config {args.config.name}, {args.runs} runs, {len(burners)} cores kept busy:")
    print(f"  exit codes: {dict(sorted(codes.items()))}")
    print(f"  a run took: median {statistics.median(seconds):.2f} s, worst {max(seconds):.2f} s")
    for lines in failures[:5]:
        print("  a failed run ended:", *lines, sep="\n    ")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
