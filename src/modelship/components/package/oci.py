"""Enough of the OCI distribution API to put an image together without a builder.

A pipeline pod has no container engine and no privileges to run one, so there the Bento's
image is assembled the way ko and Jib do it: the pipeline image (which already holds every
package the Bento needs) stays as it is in the registry, one layer with the Bento is added on
top, and the new config and manifest are uploaded. Nothing runs, nothing is unpacked.

Spoken here: pulling manifests (OCI and Docker schema 2, image indexes resolved to this
machine's platform), blobs (HEAD, GET, cross-repository mount, monolithic upload) and pushing a
manifest, with the registry token flow (``WWW-Authenticate: Bearer``) or basic auth. A registry
is spoken to over plain HTTP only where ``registries.conf`` declares it insecure, as buildah,
podman and skopeo do.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import os
import platform
import re
import tarfile
import tempfile
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from modelship.core.errors import PackagingError

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
ACCEPT = ", ".join((OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST))
#: the media types of a manifest's config and layers, by the manifest's own type
FAMILY = {OCI_MANIFEST: (OCI_CONFIG, OCI_LAYER), DOCKER_MANIFEST: (DOCKER_CONFIG, DOCKER_LAYER)}
_REF = re.compile(
    r"^(?P<registry>[a-z0-9]([a-z0-9.-]*[a-z0-9])?(:[0-9]{1,5})?)/(?P<repository>[a-z0-9._/-]+?)"
    r"(:(?P<tag>[A-Za-z0-9_][A-Za-z0-9._-]{0,127}))?(@(?P<digest>sha256:[0-9a-f]{64}))?$"
)


@dataclass(frozen=True)
class Reference:
    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @classmethod
    def parse(cls, ref: str) -> Reference:
        match = _REF.match(ref)
        host = match["registry"] if match else ""
        if match is None or not ("." in host or ":" in host or host == "localhost"):
            raise PackagingError(
                f"{ref!r} is not an image in a registry",
                hint="give REGISTRY[:PORT]/PATH:TAG or REGISTRY[:PORT]/PATH@sha256:DIGEST",
            )
        return cls(match["registry"], match["repository"], match["tag"], match["digest"])

    @property
    def reference(self) -> str:
        return self.digest or self.tag or "latest"

    def __str__(self) -> str:
        at = f"@{self.digest}" if self.digest else f":{self.tag}" if self.tag else ""
        return f"{self.registry}/{self.repository}{at}"


def sha256(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def insecure_registries() -> set[str]:
    """Registries ``registries.conf`` declares insecure (plain HTTP): ``[[registry]]`` tables
    with ``insecure = true``, read from ``$CONTAINERS_REGISTRIES_CONF`` or /etc/containers."""
    path = Path(os.environ.get("CONTAINERS_REGISTRIES_CONF") or "/etc/containers/registries.conf")
    try:
        conf = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return set()
    return {
        str(entry.get("location") or entry.get("prefix"))
        for entry in conf.get("registry", [])
        if isinstance(entry, dict) and entry.get("insecure")
    }


def _platform() -> tuple[str, str]:
    machine = platform.machine().lower()
    return "linux", {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


def _challenge(header: str) -> tuple[str, dict[str, str]]:
    scheme, _, rest = header.partition(" ")
    return scheme.lower(), dict(re.findall(r'(\w+)="([^"]*)"', rest))


class Registry:
    """One registry, spoken to with ``credentials`` (user, password) where given."""

    def __init__(
        self, host: str, credentials: tuple[str, str] | None = None, timeout_s: float = 60
    ) -> None:
        self.host = host
        scheme = "http" if host in insecure_registries() else "https"
        self.base = f"{scheme}://{host}"
        self.credentials = credentials
        self.timeout_s = timeout_s
        self.session = requests.Session()
        self._auth: dict[str, str] = {}  # scope -> Authorization header

    # -- transport ------------------------------------------------------------------------

    def _authorize(self, response: requests.Response, scope: str) -> str | None:
        scheme, params = _challenge(response.headers.get("WWW-Authenticate", ""))
        if scheme == "basic" and self.credentials:
            pair = base64.b64encode(":".join(self.credentials).encode()).decode()
            return f"Basic {pair}"
        if scheme != "bearer" or "realm" not in params:
            return None
        query = {"service": params.get("service", ""), "scope": params.get("scope", scope)}
        got = self.session.get(
            params["realm"], params=query, auth=self.credentials, timeout=self.timeout_s
        )
        if got.status_code != 200:
            return None
        body = got.json()
        token = body.get("token") or body.get("access_token")
        return f"Bearer {token}" if token else None

    def request(
        self, method: str, path: str, repository: str, *, push: bool = False, **kwargs: Any
    ) -> requests.Response:
        url = path if path.startswith("http") else f"{self.base}{path}"
        scope = f"repository:{repository}:{'pull,push' if push else 'pull'}"
        headers = dict(kwargs.pop("headers", {}))
        for attempt in range(2):
            if scope in self._auth:
                headers["Authorization"] = self._auth[scope]
            try:
                response = self.session.request(
                    method, url, headers=headers, timeout=self.timeout_s, **kwargs
                )
            except requests.ConnectionError as e:
                raise PackagingError(
                    f"registry {self.host} does not answer at {self.base}: {e.__class__.__name__}",
                    hint="is the registry up? a plain-HTTP registry must be declared insecure "
                    "in registries.conf ($CONTAINERS_REGISTRIES_CONF)",
                ) from e
            if response.status_code != 401 or attempt == 1:
                return response
            header = self._authorize(response, scope)
            if header is None:
                return response
            self._auth[scope] = header
            if hasattr(kwargs.get("data"), "seek"):
                kwargs["data"].seek(0)
        raise AssertionError("unreachable")

    def _fail(self, response: requests.Response, what: str) -> PackagingError:
        hint = (
            "set MODELSHIP_REGISTRY_USERNAME and MODELSHIP_REGISTRY_PASSWORD (the Secret's keys "
            "in a pod) to an account that may push there"
            if response.status_code in (401, 403)
            else f"the registry said: {response.text[:300]}"
        )
        return PackagingError(f"{what}: {self.host} answered {response.status_code}", hint=hint)

    # -- manifests ------------------------------------------------------------------------

    def manifest(self, ref: Reference) -> tuple[bytes, str, str]:
        """The manifest of ``ref`` for this machine's platform: bytes, media type, digest."""
        reference = ref.reference
        for _ in range(2):
            got = self.request(
                "GET", f"/v2/{ref.repository}/manifests/{reference}", ref.repository,
                headers={"Accept": ACCEPT},
            )  # fmt: skip
            if got.status_code != 200:
                raise self._fail(got, f"reading the manifest of {ref}")
            body = got.content
            media_type = json.loads(body).get("mediaType") or got.headers.get("Content-Type", "")
            if media_type not in (OCI_INDEX, DOCKER_LIST):
                return body, media_type.split(";")[0], sha256(body)
            want = _platform()
            entries = json.loads(body).get("manifests", [])
            chosen = [
                m for m in entries
                if (m.get("platform", {}).get("os"), m.get("platform", {}).get("architecture"))
                == want
            ]  # fmt: skip
            if not chosen:
                raise PackagingError(f"{ref} has no image for {'/'.join(want)}")
            reference = chosen[0]["digest"]
        raise PackagingError(f"{ref}: an index that points at another index")

    def put_manifest(self, repository: str, tag: str, body: bytes, media_type: str) -> str:
        put = self.request(
            "PUT", f"/v2/{repository}/manifests/{tag}", repository, push=True, data=body,
            headers={"Content-Type": media_type},
        )  # fmt: skip
        if put.status_code not in (200, 201):
            raise self._fail(put, f"pushing the manifest of {repository}:{tag}")
        digest = sha256(body)
        said = put.headers.get("Docker-Content-Digest")
        if said and said != digest:
            raise PackagingError(f"{self.host} stored manifest {said}, not the {digest} sent")
        return digest

    # -- blobs ----------------------------------------------------------------------------

    def has_blob(self, repository: str, digest: str) -> bool:
        head = self.request("HEAD", f"/v2/{repository}/blobs/{digest}", repository, push=True)
        return head.status_code == 200

    def blob(self, repository: str, digest: str) -> bytes:
        got = self.request("GET", f"/v2/{repository}/blobs/{digest}", repository)
        if got.status_code != 200:
            raise self._fail(got, f"reading blob {digest} of {repository}")
        if sha256(got.content) != digest:
            raise PackagingError(f"blob {digest} of {self.host}/{repository} has other content")
        return got.content

    def blob_to(self, repository: str, digest: str, path: Path) -> None:
        """Download a (large) blob to ``path``, checking its digest on the way."""
        got = self.request("GET", f"/v2/{repository}/blobs/{digest}", repository, stream=True)
        if got.status_code != 200:
            raise self._fail(got, f"reading blob {digest} of {repository}")
        hasher = hashlib.sha256()
        with path.open("wb") as out:
            for chunk in got.iter_content(1 << 20):
                hasher.update(chunk)
                out.write(chunk)
        if f"sha256:{hasher.hexdigest()}" != digest:
            raise PackagingError(f"blob {digest} of {self.host}/{repository} has other content")

    def mount(self, repository: str, digest: str, source: str) -> bool:
        """Link a blob of ``source`` (same registry) into ``repository``; False if refused."""
        posted = self.request(
            "POST", f"/v2/{repository}/blobs/uploads/", repository, push=True,
            params={"mount": digest, "from": source},
        )  # fmt: skip
        return posted.status_code == 201

    def upload(self, repository: str, digest: str, data: bytes | Path) -> None:
        """Upload a blob in one PUT (a file is streamed with its length)."""
        started = self.request("POST", f"/v2/{repository}/blobs/uploads/", repository, push=True)
        if started.status_code != 202 or "Location" not in started.headers:
            raise self._fail(started, f"starting the upload of {digest} to {repository}")
        location = started.headers["Location"]
        if not location.startswith("http"):
            location = f"{self.base}{location}"
        joiner = "&" if "?" in location else "?"
        url = f"{location}{joiner}digest={digest}"
        headers = {"Content-Type": "application/octet-stream"}
        if isinstance(data, Path):
            with data.open("rb") as body:
                headers["Content-Length"] = str(data.stat().st_size)
                put = self.request("PUT", url, repository, push=True, data=body, headers=headers)
        else:
            put = self.request("PUT", url, repository, push=True, data=data, headers=headers)
        if put.status_code not in (201, 204):
            raise self._fail(put, f"uploading {digest} to {repository}")


# -- the Bento's layer ------------------------------------------------------------------------


@dataclass(frozen=True)
class Layer:
    path: Path
    digest: str  # of the compressed bytes, what the manifest names
    diff_id: str  # of the tar, what the config's rootfs names
    size: int


def _entries(source: Path) -> Iterator[Path]:
    for path in sorted(source.rglob("*")):
        if "__pycache__" not in path.relative_to(source).parts:
            yield path


def folder_layer(source: Path, at: str, out: Path, empty_dirs: tuple[str, ...] = ()) -> Layer:
    """A gzip'd tar layer with ``source``'s files under ``at`` (absolute) and the folders
    ``empty_dirs``. Reproducible: sorted entries, owner root, times zero, so the same files
    always give the same digest. ``__pycache__`` is left out (Python writes it when serving)."""
    prefix = at.strip("/")
    tar_bytes = io.BytesIO()
    with tarfile.open(fileobj=tar_bytes, mode="w", format=tarfile.PAX_FORMAT) as tar:
        parents = [p for p in Path(prefix).parents if str(p) != "."][::-1]
        folders = [str(p) for p in parents] + [prefix]
        for extra in empty_dirs:
            folders += [str(p) for p in Path(extra.strip("/")).parents if str(p) != "."][::-1]
            folders.append(extra.strip("/"))
        for name in dict.fromkeys(folders):
            info = tarfile.TarInfo(name)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        for path in _entries(source):
            info = tar.gettarinfo(str(path), f"{prefix}/{path.relative_to(source).as_posix()}")
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            info.mtime = 0
            if info.isfile():
                with path.open("rb") as handle:
                    tar.addfile(info, handle)
            else:
                tar.addfile(info)
    raw = tar_bytes.getvalue()
    compressed = io.BytesIO()
    with gzip.GzipFile(fileobj=compressed, mode="wb", mtime=0) as gz:
        gz.write(raw)
    out.write_bytes(compressed.getvalue())
    return Layer(out, sha256(compressed.getvalue()), sha256(raw), len(compressed.getvalue()))


def copy_blob(
    source: Registry, source_repo: str, target: Registry, target_repo: str, digest: str
) -> str:
    """Make ``digest`` present in ``target_repo``: already there, mounted, or copied. Says which."""
    if target.has_blob(target_repo, digest):
        return "present"
    if source.host == target.host and target.mount(target_repo, digest, source_repo):
        return "mounted"
    with tempfile.TemporaryDirectory(prefix="modelship-blob-") as tmp:
        path = Path(tmp) / "blob"
        source.blob_to(source_repo, digest, path)
        target.upload(target_repo, digest, path)
    return "copied"
