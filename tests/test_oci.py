"""Modules from a real OCI registry (Debian's docker-registry) on loopback."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
import yaml

from wasmgate.config import ConfigError, load_config, parse_config
from wasmgate.gateway import load_processors
from wasmgate.server import start_gateway
from wasmgate.sources import OciError, OciSource
from wasmgate.sources.oci import WASM_CONFIG, module_digest

from .conftest import MODULES, free_port, header_echo
from .wat import header_setter

USER, PASSWORD = "deployer", "s3cret"


class Registry:
    """``docker-registry serve`` on a loopback port, optionally behind htpasswd basic auth."""

    def __init__(self, directory: Path, auth: bool) -> None:
        binary = shutil.which("docker-registry")
        if binary is None:
            pytest.fail("docker-registry is needed: apt-get install docker-registry (.ci/run installs it)")
        self.storage = directory / "storage"
        self.address = f"127.0.0.1:{free_port()}"
        config: dict[str, object] = {
            "version": 0.1,
            "log": {"level": "error", "accesslog": {"disabled": True}},
            "storage": {"filesystem": {"rootdirectory": str(self.storage)}},
            "http": {"addr": self.address},
        }
        if auth:
            hashed = subprocess.run(["htpasswd", "-Bbn", USER, PASSWORD], capture_output=True, text=True, check=True)
            (directory / "htpasswd").write_text(hashed.stdout)
            config["auth"] = {"htpasswd": {"realm": "wasmgate-test", "path": str(directory / "htpasswd")}}
        (directory / "registry.yml").write_text(yaml.safe_dump(config))
        self._command = [binary, "serve", str(directory / "registry.yml")]
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(self._command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://{self.address}/v2/", timeout=1).close()
                return
            except urllib.error.HTTPError:
                return  # 401 from an auth registry: it is up
            except OSError:
                time.sleep(0.05)
        pytest.fail("docker-registry did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None

    def ref(self, repository: str, tag: str = "v1") -> str:
        return f"oci://{self.address}/{repository}:{tag}"

    def source(self, cache: Path) -> OciSource:
        return OciSource(cache, [self.address])


def serving(directory: Path, auth: bool) -> Iterator[Registry]:
    served = Registry(directory, auth)
    served.start()
    yield served
    served.stop()


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    yield from serving(tmp_path_factory.mktemp("registry"), auth=False)


@pytest.fixture(scope="module")
def auth_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    yield from serving(tmp_path_factory.mktemp("auth-registry"), auth=True)


def test_a_pushed_module_is_pulled_by_tag_and_by_digest(registry, tmp_path):
    wasm = MODULES / "header-inject.wasm"
    manifest, module = registry.source(tmp_path / "push").push(wasm, registry.ref("mods/inject"))
    assert module == "sha256:" + hashlib.sha256(wasm.read_bytes()).hexdigest()
    source = registry.source(tmp_path / "cache")
    by_digest = f"oci://{registry.address}/mods/inject@{manifest}"
    assert source.fetch(registry.ref("mods/inject")) == wasm.read_bytes()
    assert source.fetch(by_digest) == wasm.read_bytes()


def test_a_blob_that_does_not_match_its_digest_is_refused(registry, tmp_path):
    wasm = MODULES / "passthrough.wasm"
    _, module = registry.source(tmp_path / "push").push(wasm, registry.ref("mods/tampered"))
    digest = module.removeprefix("sha256:")
    blob = registry.storage / "docker/registry/v2/blobs/sha256" / digest[:2] / digest / "data"
    blob.write_bytes(b"\0asm" + b"\x01\0\0\0" + b"evil")
    with pytest.raises(OciError, match="digest mismatch"):
        registry.source(tmp_path / "cache").fetch(registry.ref("mods/tampered"))


def test_a_pinned_sha256_that_does_not_match_is_refused(registry, runtime, tmp_path):
    registry.source(tmp_path / "push").push(MODULES / "header-inject.wasm", registry.ref("mods/pinned"))
    config = parse_config(
        {
            "cache_dir": str(tmp_path / "cache"),
            "oci": {"plain_http": [registry.address]},
            "processors": [{"name": "p", "module": registry.ref("mods/pinned"), "sha256": "0" * 64}],
        }
    )
    with pytest.raises(ConfigError) as raised:
        load_processors(runtime, config)
    assert raised.value.problems[0].startswith("processors[0].sha256: oci://")
    assert "not the pinned one" in raised.value.problems[0]


def test_a_restart_with_a_warm_cache_makes_no_registry_request(tmp_path):
    (tmp_path / "private").mkdir()
    registry = Registry(tmp_path / "private", auth=False)
    registry.start()
    try:
        registry.source(tmp_path / "push").push(MODULES / "passthrough.wasm", registry.ref("mods/warm"))
        registry.source(tmp_path / "cache").fetch(registry.ref("mods/warm"))  # the cold start pulls
    finally:
        registry.stop()
    # The registry is gone: only the cache can answer.
    warm = registry.source(tmp_path / "cache")
    assert warm.fetch(registry.ref("mods/warm")) == (MODULES / "passthrough.wasm").read_bytes()
    with pytest.raises(OciError, match="cannot reach"):
        warm.fetch(registry.ref("mods/warm"), always=True)


def test_a_registry_with_basic_auth_refuses_a_pull_without_credentials(auth_registry, tmp_path, monkeypatch):
    monkeypatch.setenv("ORAS_USER", USER)
    monkeypatch.setenv("ORAS_PASS", PASSWORD)
    auth_registry.source(tmp_path / "push").push(MODULES / "passthrough.wasm", auth_registry.ref("mods/private"))
    monkeypatch.delenv("ORAS_USER")
    monkeypatch.delenv("ORAS_PASS")
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.docker/config.json either
    with pytest.raises(OciError, match="asks for credentials and none are set"):
        auth_registry.source(tmp_path / "cache").fetch(auth_registry.ref("mods/private"))


def test_credentials_come_from_a_docker_auth_file(auth_registry, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    auth_file = tmp_path / "auth.json"
    auth_file.write_text(json.dumps({"auths": {auth_registry.address: {"auth": token}}}))
    source = OciSource(tmp_path / "cache", [auth_registry.address], auth_file)
    source.push(MODULES / "header-inject.wasm", auth_registry.ref("mods/by-file"))
    assert source.fetch(auth_registry.ref("mods/by-file")) == (MODULES / "header-inject.wasm").read_bytes()


def test_wasmgate_push_publishes_a_module_the_gateway_serves(registry, runtime, tmp_path):
    pushed = subprocess.run(
        [
            sys.executable,
            "-m",
            "wasmgate",
            "push",
            str(MODULES / "header-inject.wasm"),
            registry.ref("mods/served"),
            "--plain-http",
            registry.address,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert pushed.returncode == 0, pushed.stderr
    sha = hashlib.sha256((MODULES / "header-inject.wasm").read_bytes()).hexdigest()
    assert f"pin it with sha256: {sha}" in pushed.stdout

    async def scenario() -> str:
        upstream, upstream_url = await header_echo("x-from")
        config = parse_config(
            {
                "listen": "127.0.0.1:0",
                "cache_dir": str(tmp_path / "cache"),
                "oci": {"plain_http": [registry.address]},
                "processors": [
                    {
                        "name": "inject",
                        "module": registry.ref("mods/served"),
                        "sha256": sha,
                        "config": {"request": {"add": {"x-from": "oci"}}},
                    }
                ],
                "routes": [{"name": "r", "upstream": upstream_url, "processors": ["inject"]}],
            }
        )
        gateway = await start_gateway(config, runtime)
        host, port = gateway.addresses[0][:2]
        try:
            async with aiohttp.ClientSession() as client, client.get(f"http://{host}:{port}/") as response:
                return await response.text()
        finally:
            await gateway.cleanup()
            await upstream.cleanup()

    assert asyncio.run(scenario()) == "oci"


async def test_a_moved_tag_with_pull_policy_always_is_picked_up(registry, runtime, tmp_path):
    def tagging(version: str) -> Path:
        path = tmp_path / f"tag-{version}.wasm"
        path.write_bytes(header_setter("x-version", version))
        return path

    source = registry.source(tmp_path / "push")
    source.push(tagging("v1"), registry.ref("mods/moving", "stable"))

    upstream, upstream_url = await header_echo("x-version")
    config_path = tmp_path / "gateway.yaml"
    config_path.write_text(
        yaml.safe_dump(
            {
                "listen": "127.0.0.1:0",
                "cache_dir": str(tmp_path / "cache"),
                "module_dirs": [],
                "oci": {"plain_http": [registry.address], "poll_interval": "200ms"},
                "processors": [
                    {"name": "tag", "module": registry.ref("mods/moving", "stable"), "pull_policy": "always"}
                ],
                "routes": [{"name": "r", "upstream": upstream_url, "processors": ["tag"]}],
            }
        )
    )
    gateway = await start_gateway(load_config(config_path), runtime, config_path=config_path)
    host, port = gateway.addresses[0][:2]
    try:
        async with aiohttp.ClientSession() as client:
            async with client.get(f"http://{host}:{port}/") as response:
                assert await response.text() == "v1"
            await asyncio.get_running_loop().run_in_executor(
                None, source.push, tagging("v2"), registry.ref("mods/moving", "stable")
            )
            deadline = time.monotonic() + 10
            seen = "v1"
            while seen != "v2" and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
                async with client.get(f"http://{host}:{port}/") as response:
                    seen = await response.text()
            assert seen == "v2"
    finally:
        await gateway.cleanup()
        await upstream.cleanup()


def test_wrong_credentials_are_refused_with_a_clear_error(auth_registry, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("ORAS_USER", USER)
    monkeypatch.setenv("ORAS_PASS", "wrong")
    with pytest.raises(OciError, match=r"refused the credentials \(401\)"):
        auth_registry.source(tmp_path / "cache").fetch(auth_registry.ref("mods/anything"))


@pytest.mark.parametrize(
    ("manifest", "problem"),
    [
        (b'{"config": "x"}', "the registry's manifest is malformed: config: Input should be an object"),
        (b"not json", "the registry's manifest is malformed: the manifest: Invalid JSON"),
        (b'{"config": {"mediaType": "a", "digest": "sha256:00"}, "layers": []}', "malformed: config.digest"),
        (
            json.dumps(
                {
                    "config": {"mediaType": WASM_CONFIG, "digest": "sha256:" + "0" * 64},
                    "layers": [{"mediaType": "application/tar", "digest": "sha256:" + "1" * 64}],
                }
            ).encode(),
            "is not a Wasm module artifact",
        ),
    ],
)
def test_a_manifest_that_is_not_a_wasm_module_artifact_is_an_oci_error_naming_why(manifest, problem):
    with pytest.raises(OciError, match=re.escape(problem)):
        module_digest(manifest, "oci://registry.test/m:1")
