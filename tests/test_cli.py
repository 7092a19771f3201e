"""The ``wasmgate`` command, run as a user runs it."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from wasmgate.runtime import instances_allowed
from wasmgate.server import FailedStarts

from .conftest import free_port
from .wat import guest

WASMGATE = [sys.executable, "-m", "wasmgate"]


def write_config(directory: Path, **data: object) -> Path:
    path = directory / "gateway.yaml"
    path.write_text(yaml.safe_dump({"module_dirs": ["."], "cache_dir": str(directory / "cache"), **data}))
    return path


def wasmgate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*WASMGATE, *args], capture_output=True, text=True, timeout=60)


def test_check_names_each_problem_and_exits_1(tmp_path: Path):
    config = write_config(
        tmp_path,
        processors=[{"name": "p", "module": "missing"}, {"name": "q", "module": "m", "body": "sometimes"}],
    )
    result = wasmgate("check", "--config", str(config))
    assert result.returncode == 1
    assert "processors[1].body: Input should be 'stream' or 'buffer'" in result.stderr


def test_check_reports_a_module_that_is_not_there(tmp_path: Path):
    config = write_config(tmp_path, processors=[{"name": "p", "module": "missing"}])
    result = wasmgate("check", "--config", str(config))
    assert result.returncode == 1
    assert "processors[0].module: no missing.wasm in module_dirs" in result.stderr


def test_check_runs_each_processors_init(tmp_path: Path):
    (tmp_path / "ok.wasm").write_bytes(guest())
    (tmp_path / "not-wasm.wasm").write_bytes(b"\0asm garbage")
    config = write_config(
        tmp_path, processors=[{"name": "good", "module": "ok"}, {"name": "bad", "module": "not-wasm"}]
    )
    result = wasmgate("check", "--config", str(config))
    assert result.returncode == 1
    wasm_file = tmp_path / "not-wasm.wasm"
    assert f"processors[1].module: {wasm_file}: module 'not-wasm' is not valid WebAssembly" in result.stderr
    assert "processors[0]" not in result.stderr


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"(module)", "is not a WebAssembly module (a .wasm file starts with \\0asm)"),
        (b"\0asm\x0d\x00\x01\x00", "is a WebAssembly component; the gateway runs core modules"),
    ],
    ids=["text", "component"],
)
def test_check_names_the_file_that_is_not_a_core_module_and_says_what_it_is(tmp_path: Path, content, problem):
    (tmp_path / "odd.wasm").write_bytes(content)
    config = write_config(tmp_path, processors=[{"name": "p", "module": "odd"}])
    result = wasmgate("check", "--config", str(config))
    assert result.returncode == 1
    assert f"processors[0].module: {tmp_path / 'odd.wasm'}: module 'odd' {problem}" in result.stderr


def test_a_shipped_example_module_is_found_by_name_after_module_dirs(tmp_path: Path):
    config = write_config(tmp_path, processors=[{"name": "pii", "module": "pii-redact"}])
    result = wasmgate("check", "--config", str(config))
    assert result.returncode == 0, result.stderr


def test_a_module_in_module_dirs_comes_before_the_shipped_one_of_its_name(tmp_path: Path):
    (tmp_path / "pii-redact.wasm").write_bytes(b"mine")
    config = write_config(tmp_path, processors=[{"name": "pii", "module": "pii-redact"}])
    result = wasmgate("check", "--config", str(config))
    assert f"{tmp_path / 'pii-redact.wasm'}: module 'pii-redact' is not a WebAssembly module" in result.stderr


def test_check_passes_a_config_of_many_fresh_instance_processors(tmp_path: Path):
    # Checking keeps no instance started ahead of need, so its few slots hold every processor's init.
    (tmp_path / "ok.wasm").write_bytes(guest())
    config = write_config(tmp_path, processors=[{"name": f"p{i}", "module": "ok"} for i in range(40)])
    result = wasmgate("check", "--config", str(config))
    assert result.returncode == 0, result.stderr


def test_check_and_run_refuse_more_instance_slots_than_the_machines_memory_mappings_allow(tmp_path: Path):
    allowed = instances_allowed()
    assert allowed is not None, "these tests run on Linux"
    config = write_config(tmp_path, sandbox={"max_instances": allowed + 1})
    for command in ("check", "run"):
        result = wasmgate(command, "--config", str(config))
        assert result.returncode == 1, command
        assert f"sandbox.max_instances: {allowed + 1} is more instance slots than" in result.stderr, command
        assert "Traceback" not in result.stderr


def test_check_and_run_refuse_a_cache_dir_open_to_other_users(tmp_path: Path):
    cache = tmp_path / "shared-cache"
    cache.mkdir()
    cache.chmod(0o777)
    config = tmp_path / "gateway.yaml"
    config.write_text(yaml.safe_dump({"module_dirs": ["."], "cache_dir": str(cache)}))
    for command in ("check", "run"):
        result = wasmgate(command, "--config", str(config))
        assert result.returncode == 1, command
        assert f"cache_dir: {cache} is open to other users (mode 777); chmod 700 it" in result.stderr, command


def test_version_prints_the_packages_version():
    result = wasmgate("--version")
    assert (result.returncode, result.stdout.strip()) == (0, "wasmgate 0.1.0")


@pytest.mark.parametrize("workers", ["0", "-1", "two"])
def test_run_refuses_a_worker_count_that_is_not_one_or_more(tmp_path: Path, workers: str):
    config = write_config(tmp_path)
    result = wasmgate("run", "--config", str(config), "--workers", workers)
    assert result.returncode == 2
    assert f"argument --workers: '{workers}' is not a number of worker processes (1 or more)" in result.stderr


@pytest.mark.parametrize("workers", ["1", "2"])
def test_run_on_a_held_port_says_so_in_one_line_and_exits_1(tmp_path: Path, workers: str):
    with socket.create_server(("127.0.0.1", 0)) as held:
        address = f"127.0.0.1:{held.getsockname()[1]}"
        config = write_config(tmp_path, listen=address, admin_listen=f"127.0.0.1:{free_port()}")
        result = wasmgate("run", "--config", str(config), "--workers", workers)
    assert result.returncode == 1
    said = result.stderr.strip().splitlines()[-1].strip()
    assert said == f"listen: cannot listen on {address}: Address already in use"
    assert "Traceback" not in result.stderr


def test_config_explain_prints_the_effective_config(tmp_path: Path):
    config = write_config(tmp_path, processors=[{"name": "p", "module": "m"}])
    result = wasmgate("config", "--explain", str(config))
    assert result.returncode == 0
    assert yaml.safe_load(result.stdout)["processors"][0]["failure_mode"] == "fail_closed"


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[tuple[str, str, subprocess.Popen[str]]]:
    """``wasmgate run --workers 2`` in front of an upstream that is not there (502s are fine here)."""
    (tmp_path / "tag.wasm").write_bytes(
        guest(
            phases=4,
            response_headers="i32.const 1 {s:n} {s:v} call $set-header i32.const 0",
            strings={"n": "x-tag", "v": "on"},
        )
    )
    listen, admin = free_port(), free_port()
    config = write_config(
        tmp_path,
        listen=f"127.0.0.1:{listen}",
        admin_listen=f"127.0.0.1:{admin}",
        processors=[{"name": "tag", "module": "tag"}],
        routes=[{"name": "r", "upstream": f"http://127.0.0.1:{free_port()}", "processors": ["tag"]}],
    )
    process = subprocess.Popen(
        [*WASMGATE, "run", "--config", str(config), "--workers", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base, admin_base = f"http://127.0.0.1:{listen}", f"http://127.0.0.1:{admin}"
    if not ready(admin_base):
        process.kill()
        pytest.fail(f"the gateway did not become ready:\n{process.communicate()[0]}")
    yield base, admin_base, process
    if process.poll() is None:
        process.terminate()  # the supervisor stops its workers
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def ready(admin: str, seconds: float = 30) -> bool:
    """Whether the admin listener at ``admin`` says ready within ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if get(f"{admin}/readyz")[0] == 200:
                return True
        except OSError:
            pass
        time.sleep(0.1)
    return False


def children(pid: int) -> set[int]:
    """The processes whose parent is ``pid``, from /proc."""
    found = set()
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text()
        except (OSError, ValueError):
            continue  # not a process, or gone meanwhile
        if int(stat.rpartition(")")[2].split()[1]) == pid:
            found.add(int(entry.name))
    return found


def running(pid: int) -> bool:
    """Whether a process is alive: not gone, and not a zombie waiting for its parent to reap it."""
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def test_workers_stop_when_their_supervisor_is_killed(gateway):
    _, _, process = gateway
    workers = children(process.pid)
    assert len(workers) >= 2
    process.kill()
    process.wait()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and any(map(running, workers)):
        time.sleep(0.1)
    assert not [pid for pid in workers if running(pid)], "workers outlived their supervisor"


def test_run_serves_through_its_workers_and_stops_on_sigterm(gateway):
    base, admin, process = gateway
    statuses = [get(f"{base}/v1/x")[0] for _ in range(20)]
    assert statuses == [502] * 20
    assert get(f"{admin}/healthz")[0] == 200
    status, metrics = get(f"{admin}/metrics")
    assert status == 200
    samples = metrics.decode().splitlines()
    line = next(line for line in samples if line.startswith("wasmgate_requests_total{"))
    assert line.endswith(" 20.0")  # both workers' counts, added up
    calls = 'wasmgate_processor_invocations_total{phase="response_headers",processor="tag"} 20.0'
    assert calls in samples
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=30)
    assert process.returncode == 0, output
    lines = [json.loads(line) for line in output.splitlines()]  # JSON Lines: every line an object
    access = [line for line in lines if line["logger"] == "wasmgate.access"]
    assert len(access) == 20
    assert all(isinstance(line["worker"], int) for line in access)  # each says which worker served it
    assert access[0]["processors"]["tag"]["outcome"] == "continue"
    assert access[0]["status"] == 502


@pytest.mark.parametrize(
    ("example", "counts"), [("gateway", "3 processors, 2 routes"), ("guards", "2 processors, 1 routes")]
)
def test_each_example_config_loads_every_module(example, counts):
    checked = wasmgate("check", "--config", str(Path(__file__).parent.parent / "examples" / f"{example}.yaml"))
    assert checked.returncode == 0, checked.stderr
    assert counts in checked.stdout


def test_sighup_reloads_every_worker(gateway):
    _, admin, process = gateway
    process.send_signal(signal.SIGHUP)
    applied = 'wasmgate_reloads_total{result="applied"} 2.0'  # one per worker, added up
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if applied in get(f"{admin}/metrics")[1].decode().splitlines():
            break
        time.sleep(0.1)
    else:
        pytest.fail("the workers did not reload after SIGHUP")
    assert get(f"{admin}/readyz")[0] == 200


def test_the_supervisor_gives_up_after_workers_in_a_row_exit_before_they_serve():
    starts = FailedStarts(limit=3)
    assert [starts.exited(served=False) for _ in range(2)] == [False, False]
    assert not starts.exited(served=True)  # a crash after serving: restarted, and the count starts again
    assert [starts.exited(served=False) for _ in range(3)] == [False, False, True]


def test_check_reports_a_state_path_it_cannot_open(tmp_path: Path):
    config = write_config(tmp_path, state={"path": str(tmp_path)})  # a directory
    result = wasmgate("check", "--config", str(config))
    assert result.returncode == 1
    assert f"state.path: cannot use {tmp_path}: unable to open database file" in result.stderr


def test_run_listens_where_the_command_line_says_and_logs_its_drain_on_sigterm(tmp_path: Path):
    listen, admin = free_port(), free_port()
    config = write_config(tmp_path, listen="127.0.0.1:1", admin_listen="127.0.0.1:1")  # overridden
    command = ["run", "--config", str(config), "--workers", "1"]
    addresses = ["--listen", f"127.0.0.1:{listen}", "--admin-listen", f"127.0.0.1:{admin}"]
    process = subprocess.Popen([*WASMGATE, *command, *addresses], stderr=subprocess.PIPE, text=True)
    try:
        assert ready(f"http://127.0.0.1:{admin}")
        assert get(f"http://127.0.0.1:{listen}/nowhere")[0] == 404
        process.send_signal(signal.SIGTERM)
        _, errors = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 0, errors
    messages = [json.loads(line).get("message", "") for line in errors.splitlines()]  # access lines have none
    assert any(m.startswith("stopping: no new connections") for m in messages)
    assert any(m.startswith("stopped after") for m in messages)


def test_run_refuses_a_listen_address_on_the_command_line_that_is_not_one(tmp_path: Path):
    result = wasmgate("run", "--config", str(write_config(tmp_path)), "--listen", "nowhere")
    assert result.returncode == 2
    assert "'nowhere' is not an address" in result.stderr
