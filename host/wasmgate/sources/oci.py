"""Modules from OCI registries, in the CNCF Wasm artifact layout.

A reference is ``oci://REGISTRY/REPO:TAG`` or ``oci://REGISTRY/REPO@sha256:DIGEST``
(the manifest's digest). The artifact is a manifest whose config has media
type ``application/vnd.wasm.config.v0+json`` and which has exactly one
``application/wasm`` layer: the module. Pulled and pushed with ``oras``;
every digest is checked here, since oras does not check what it downloads.

Modules are cached on disk by their digest, and what each reference
resolved to beside them, so a restart with a warm cache makes no registry
request (``pull_policy: if_not_present``; a digest reference never needs
one). With ``pull_policy: always`` a tag is resolved again on each load and
poll, and only a new digest is downloaded.

Credentials: ``ORAS_USER`` and ``ORAS_PASS`` in the environment, or a
Docker-style auth file (``{"auths": {"REGISTRY": {"auth": base64("user:pass")}}}``):
``oci.auth_file``, else ``~/.docker/config.json``. Never the gateway config.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
import urllib.parse
from pathlib import Path
from typing import Any

import oras.container
import oras.provider
import requests
from pydantic import BaseModel, Field, ValidationError

from ..config.references import Reference, parse_reference

WASM_CONFIG = "application/vnd.wasm.config.v0+json"
WASM_LAYER = "application/wasm"
MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MAX_MODULE_BYTES = 256 * 2**20


class OciError(Exception):
    """A module could not be had from a registry, and why."""


class _Descriptor(BaseModel):
    """A manifest's reference to a blob (OCI image spec, descriptor.md): what we read of it."""

    mediaType: str  # the spec's name
    digest: str = Field(pattern=r"^sha256:[0-9a-f]{64}$")


class _Manifest(BaseModel):
    """An OCI image manifest (OCI image spec, manifest.md): what we read of it."""

    config: _Descriptor
    layers: list[_Descriptor]


def module_digest(raw: bytes, name: str) -> str:
    """The digest of the module a manifest names; ``OciError`` unless it is a Wasm module artifact."""
    try:
        manifest = _Manifest.model_validate_json(raw)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "the manifest"
        raise OciError(f"{name}: the registry's manifest is malformed: {where}: {first['msg']}") from None
    media_types = [layer.mediaType for layer in manifest.layers]
    if manifest.config.mediaType != WASM_CONFIG or media_types != [WASM_LAYER]:
        raise OciError(
            f"{name} is not a Wasm module artifact: expected config {WASM_CONFIG} and one {WASM_LAYER} layer,"
            f" found config {manifest.config.mediaType} and layers {media_types}"
        )
    return manifest.layers[0].digest


class _Registry(oras.provider.Registry):
    """oras' registry client without its built-in retries (about two minutes of back-off):
    a failed pull fails its load at once, and the running version keeps serving."""

    def do_request(self, *args: Any, **kwargs: Any) -> requests.Response:
        return oras.provider.Registry.do_request.__wrapped__(self, *args, **kwargs)


class OciSource:
    """Pulls (and pushes) modules; thread-safe."""

    def __init__(self, cache_dir: Path, plain_http: list[str], auth_file: Path | None = None) -> None:
        self._blobs = cache_dir / "oci" / "blobs"
        self._refs = cache_dir / "oci" / "refs"
        self._plain_http = frozenset(plain_http)
        self._auth_file = auth_file
        self._clients: dict[str, _Registry] = {}
        self._lock = threading.Lock()

    # -- pulling -----------------------------------------------------------------------

    def fetch(self, reference: str, always: bool = False) -> bytes:
        """The module ``reference`` names: from the cache when it may be, else pulled and checked."""
        ref = parse_reference(reference)
        if ref.digest or not always:
            cached = self._cached(reference)
            if cached is not None:
                return cached
        layer = self._resolve(ref)
        module = self._blob(layer) or self._download(ref, layer)
        self._remember(reference, layer)
        return module

    def latest(self, reference: str) -> str:
        """The layer digest ``reference`` resolves to in the registry now (one manifest request)."""
        return self._resolve(parse_reference(reference))

    def cached_digest(self, reference: str) -> str | None:
        path = self._ref_path(reference)
        return path.read_text().strip() if path.is_file() else None

    def _cached(self, reference: str) -> bytes | None:
        layer = self.cached_digest(reference)
        return self._blob(layer) if layer else None

    def _resolve(self, ref: Reference) -> str:
        """Fetches the manifest, checks its digest (for a digest reference) and layout; returns the module's digest."""
        client = self._client(ref)
        container = client.get_container(ref.target)
        self._load_credentials(client, container)
        url = f"{client.prefix}://{container.manifest_url()}"
        response = self._request(client, url, {"Accept": MANIFEST}, ref)
        raw = response.content
        if ref.digest and _digest(raw) != ref.digest:
            raise OciError(f"oci://{ref.target}: the registry's manifest has digest {_digest(raw)}, not {ref.digest}")
        return module_digest(raw, f"oci://{ref.target}")

    def _download(self, ref: Reference, layer: str) -> bytes:
        client = self._client(ref)
        container = client.get_container(ref.target)
        url = f"{client.prefix}://{container.get_blob_url(layer)}"
        response = self._request(client, url, {}, ref, stream=True)
        data = bytearray()
        for chunk in response.iter_content(chunk_size=1 << 16):
            data += chunk
            if len(data) > MAX_MODULE_BYTES:
                raise OciError(f"oci://{ref.target}: the module is larger than {MAX_MODULE_BYTES} bytes")
        if _digest(data) != layer:
            raise OciError(f"oci://{ref.target}: digest mismatch: the registry sent {_digest(data)} for {layer}")
        _write_atomically(self._blob_path(layer), bytes(data))
        return bytes(data)

    def _request(
        self, client: _Registry, url: str, headers: dict[str, str], ref: Reference, stream: bool = False
    ) -> requests.Response:
        try:
            response = client.do_request(url, "GET", headers={**client.headers, **headers}, stream=stream)
        except requests.RequestException as error:
            raise OciError(f"oci://{ref.target}: cannot reach {ref.registry}: {error}") from None
        except AttributeError:  # oras' basic auth, asked for credentials it was never given
            raise OciError(
                f"oci://{ref.target}: {ref.registry} asks for credentials and none are set "
                "(ORAS_USER and ORAS_PASS, or an auth file)"
            ) from None
        if response.status_code in (401, 403):
            raise OciError(f"oci://{ref.target}: {ref.registry} refused the credentials ({response.status_code})")
        if response.status_code == 404:
            raise OciError(f"oci://{ref.target}: not found in {ref.registry}")
        if response.status_code != 200:
            raise OciError(f"oci://{ref.target}: {ref.registry} answered {response.status_code}")
        return response

    # -- pushing -----------------------------------------------------------------------

    def push(self, module: Path, reference: str) -> tuple[str, str]:
        """Publishes ``module`` at a tag reference; returns its manifest and module digests."""
        ref = parse_reference(reference)
        if ref.digest:
            raise OciError("push to a tag (oci://REGISTRY/REPO:TAG): a digest names what the registry already has")
        data = module.read_bytes()
        client = self._client(ref)
        self._load_credentials(client, client.get_container(ref.target))
        with tempfile.TemporaryDirectory() as scratch:
            layer = Path(scratch) / module.name
            layer.write_bytes(data)
            config = Path(scratch) / "config.json"
            config.write_text(json.dumps({"architecture": "wasm", "os": "wasip1", "layerDigests": [_digest(data)]}))
            try:
                client.push(
                    target=ref.target,
                    files=[f"{layer}:{WASM_LAYER}"],
                    manifest_config=f"{config}:{WASM_CONFIG}",
                    disable_path_validation=True,
                    quiet=True,
                )
            except (requests.RequestException, ValueError) as error:
                raise OciError(f"oci://{ref.target}: push failed: {error}") from None
        manifest = self._request(
            client, f"{client.prefix}://{client.get_container(ref.target).manifest_url()}", {"Accept": MANIFEST}, ref
        )
        return _digest(manifest.content), _digest(data)

    # -- plumbing ------------------------------------------------------------------------

    def _client(self, ref: Reference) -> _Registry:
        with self._lock:
            client = self._clients.get(ref.registry)
            if client is None:
                insecure = ref.registry in self._plain_http
                client = self._clients[ref.registry] = _Registry(insecure=insecure, auth_backend="basic")
            return client

    def _load_credentials(self, client: _Registry, container: oras.container.Container) -> None:
        configs = [str(self._auth_file)] if self._auth_file else None
        client.auth.load_configs(container, configs=configs)

    def _blob_path(self, digest: str) -> Path:
        return self._blobs / digest.replace(":", "-")

    def _ref_path(self, reference: str) -> Path:
        return self._refs / urllib.parse.quote(reference, safe="")

    def _blob(self, digest: str) -> bytes | None:
        """A cached module, checked again: the cache is a file anyone may have touched."""
        path = self._blob_path(digest)
        if not path.is_file():
            return None
        data = path.read_bytes()
        return data if _digest(data) == digest else None

    def _remember(self, reference: str, layer: str) -> None:
        _write_atomically(self._ref_path(reference), layer.encode())


def _digest(data: bytes | bytearray) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, delete=False) as out:
        out.write(data)
    os.replace(out.name, path)
