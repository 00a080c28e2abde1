"""OCI images of a Bento, built with whatever real builder this machine has.

Builders are picked by name from :data:`BUILDERS` (docker buildx where an engine answers,
buildah otherwise). Nothing is pulled when buildah builds: its base image is made here, once,
with debootstrap (Debian bookworm, its python3.11 and venv), and kept in buildah's storage.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from modelship.components.containers import BUILDAH
from modelship.core.assets import asset
from modelship.core.errors import PackagingError

CONTAINERFILE = asset("bentos", "Containerfile")
BASE_IMAGE = "localhost/modelship-base:bookworm"
DEBIAN_MIRROR = "http://deb.debian.org/debian"


def ca_bundle() -> str | None:
    """The CA bundle pip uses here, handed to the image build as the secret ``pip-ca``."""
    for key in ("PIP_CERT", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE"):
        path = os.environ.get(key)
        if path and Path(path).is_file():
            return path
    default = Path("/etc/ssl/certs/ca-certificates.crt")
    return str(default) if default.is_file() else None


def _secret_args() -> list[str]:
    bundle = ca_bundle()
    return ["--secret", f"id=pip-ca,src={bundle}"] if bundle else []


@dataclass(frozen=True)
class Image:
    ref: str
    image_id: str
    builder: str
    size: str


class Builder(Protocol):
    name: str

    def available(self) -> str | None:
        """None when this builder can work here, else why not."""

    def build(self, context: Path, tag: str, log: Path) -> Image: ...

    def push(self, image: Image, target: str, log: Path) -> str:
        """Push ``image`` to ``target`` (REGISTRY/PATH:TAG); the pushed manifest's digest."""
        ...


REGISTRY_USER_ENV = "MODELSHIP_REGISTRY_USERNAME"
REGISTRY_PASSWORD_ENV = "MODELSHIP_REGISTRY_PASSWORD"


def auth_file(target: str, folder: Path) -> Path | None:
    """A containers auth file (0600, in ``folder``) for ``target``'s registry from the
    environment's credentials; None without them. A file, so the password is never on a
    command line that ``ps`` shows."""
    import base64

    user, password = os.environ.get(REGISTRY_USER_ENV), os.environ.get(REGISTRY_PASSWORD_ENV)
    if not (user and password):
        return None
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    path = folder / "registry-auth.json"
    path.touch(mode=0o600)
    path.write_text(json.dumps({"auths": {target.split("/", 1)[0]: {"auth": token}}}))
    return path


def pushed_ref(target: str, digest: str) -> str:
    """``REGISTRY/PATH@sha256:...``: the pushed image by digest, what a cluster pulls."""
    repository = target.rsplit(":", 1)[0] if ":" in target.rsplit("/", 1)[-1] else target
    return f"{repository}@{digest}"


def _run(cmd: list[str], log: Path, what: str, timeout_s: float = 1800) -> str:
    with log.open("a") as out:
        out.write(f"$ {' '.join(cmd)}\n")
        out.flush()
        try:
            done = subprocess.run(
                cmd, stdout=subprocess.PIPE, stderr=out, text=True, timeout=timeout_s
            )
        except subprocess.TimeoutExpired as e:
            raise PackagingError(f"{what} took over {timeout_s:.0f} s; see {log}") from e
        out.write(done.stdout)
    if done.returncode != 0:
        tail = log.read_text().strip().splitlines()[-5:]
        raise PackagingError(
            f"{what} failed (exit {done.returncode}): {' | '.join(tail)}",
            hint=f"the whole log is {log}",
        )
    return done.stdout


class Buildah:
    name = "buildah"

    def available(self) -> str | None:
        if shutil.which("buildah") is None:
            return "buildah is not installed (apt-get install buildah)"
        return None

    def has_image(self, ref: str) -> bool:
        found = subprocess.run(
            [*BUILDAH, "images", "--quiet", ref], capture_output=True, text=True, check=False
        )
        return found.returncode == 0 and bool(found.stdout.strip())

    def ensure_base(self, log: Path) -> str:
        if self.has_image(BASE_IMAGE):
            return BASE_IMAGE
        if shutil.which("debootstrap") is None:
            raise PackagingError(
                f"no base image {BASE_IMAGE} and no debootstrap to make one",
                hint="apt-get install debootstrap, or set package.image: never in the policy",
            )
        with tempfile.TemporaryDirectory(prefix="modelship-base-") as tmp:
            rootfs = Path(tmp) / "rootfs"
            _run(
                ["debootstrap", "--variant=minbase", "--include=python3,python3-venv,ca-certificates",
                 "bookworm", str(rootfs), DEBIAN_MIRROR],
                log, "debootstrap of the base image",
            )  # fmt: skip
            (Path(tmp) / "Containerfile").write_text("FROM scratch\nADD rootfs.tar /\n")
            _run(["tar", "-C", str(rootfs), "-cf", str(Path(tmp) / "rootfs.tar"), "."], log, "tar")
            shutil.rmtree(rootfs)
            _run(
                [*BUILDAH, "bud", "--isolation", "chroot", "-t", BASE_IMAGE, tmp],
                log, "buildah bud of the base image",
            )  # fmt: skip
        return BASE_IMAGE

    def build(self, context: Path, tag: str, log: Path) -> Image:
        base = self.ensure_base(log)
        _run(
            [*BUILDAH, "bud", "--isolation", "chroot", "--build-arg", f"BASE_IMAGE={base}",
             *_secret_args(), "-f", str(CONTAINERFILE), "-t", tag, str(context)],
            log, f"buildah bud of {tag}",
        )  # fmt: skip
        listed = json.loads(_run([*BUILDAH, "images", "--json", tag], log, "buildah images"))
        info = listed[0] if listed else {}
        return Image(tag, str(info.get("digest", "")), self.name, str(info.get("size", "")))

    def push(self, image: Image, target: str, log: Path) -> str:
        with tempfile.TemporaryDirectory(prefix="modelship-push-") as tmp:
            digest_file = Path(tmp) / "digest"
            auth = auth_file(target, Path(tmp))
            _run(
                [*BUILDAH, "push", "--digestfile", str(digest_file),
                 *(["--authfile", str(auth)] if auth else []), image.ref, f"docker://{target}"],
                log, f"buildah push of {image.ref} to {target}", timeout_s=1800,
            )  # fmt: skip
            return digest_file.read_text().strip()


class DockerBuildx:
    name = "docker"

    def available(self) -> str | None:
        if shutil.which("docker") is None:
            return "docker is not installed"
        engine = subprocess.run(
            ["docker", "info", "--format", "{{.ServerVersion}}"],
            capture_output=True, text=True, check=False, timeout=20,
        )  # fmt: skip
        if engine.returncode != 0:
            return "docker is installed but no engine answers"
        return None

    def build(self, context: Path, tag: str, log: Path) -> Image:
        _run(
            ["docker", "buildx", "build", "--load", *_secret_args(), "-f", str(CONTAINERFILE),
             "-t", tag, str(context)],
            log, f"docker buildx build of {tag}",
        )  # fmt: skip
        out = _run(["docker", "image", "inspect", tag], log, "inspect")
        info = json.loads(out)[0]
        return Image(tag, info["Id"], self.name, f"{info.get('Size', 0) / 1e6:.0f} MB")

    def push(self, image: Image, target: str, log: Path) -> str:
        # docker keeps registry credentials in its own config (`docker login`)
        _run(["docker", "tag", image.ref, target], log, f"docker tag {target}")
        _run(["docker", "push", target], log, f"docker push of {target}", timeout_s=1800)
        out = _run(["docker", "image", "inspect", "--format", "{{json .RepoDigests}}", target],
                   log, "inspect")  # fmt: skip
        repository = target.rsplit(":", 1)[0]
        for ref in json.loads(out):
            if ref.startswith(f"{repository}@"):
                return str(ref.split("@", 1)[1])
        raise PackagingError(f"docker pushed {target} but reports no digest for it")


#: tried in this order; the first that can work here builds
BUILDERS: dict[str, Callable[[], Builder]] = {"docker": DockerBuildx, "buildah": Buildah}


def pick_builder() -> tuple[Builder | None, list[str]]:
    """The first builder that works here, and why each one before it did not."""
    why_not: list[str] = []
    for name, make in BUILDERS.items():
        builder = make()
        reason = builder.available()
        if reason is None:
            return builder, why_not
        why_not.append(f"{name}: {reason}")
    return None, why_not


def image_ref(bento_name: str, bento_version: str) -> str:
    return f"localhost/{bento_name}:{bento_version}"
