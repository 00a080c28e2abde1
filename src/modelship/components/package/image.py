"""OCI images of a Bento, built with whatever real builder this machine has.

Builders are picked by name from :data:`BUILDERS` (docker buildx where an engine answers,
buildah otherwise, and in a pipeline pod, which has neither, the Bento assembled as a layer on
the pipeline image in the registry). Nothing is pulled when buildah builds: its base image is
made here, once, with debootstrap (Debian bookworm, its python3.11 and venv), and kept in
buildah's storage.
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

import yaml

from modelship.components.containers import BUILDAH
from modelship.components.package import oci
from modelship.components.serving.bentostore import bento_digest
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


#: the label that names, in the image, the digest of the Bento inside it (as the version's
#: ``modelship.bento_digest`` tag does): `skopeo inspect` shows which Bento a cluster runs
BENTO_DIGEST_LABEL = "modelship.bento.digest"


def _label_args(context: Path) -> list[str]:
    return ["--label", f"{BENTO_DIGEST_LABEL}={bento_digest(context)}"]


def _secret_args() -> list[str]:
    bundle = ca_bundle()
    return ["--secret", f"id=pip-ca,src={bundle}"] if bundle else []


@dataclass(frozen=True)
class Image:
    ref: str
    image_id: str
    builder: str
    size: str
    #: where an assembled (not built) image waits for its push: layer, config, manifest
    layout: str = ""


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


def _credentials() -> tuple[str, str] | None:
    """The registry's user and password from the environment (the Secret's keys in a pod)."""
    user, password = os.environ.get(REGISTRY_USER_ENV), os.environ.get(REGISTRY_PASSWORD_ENV)
    return (user, password) if user and password else None


def auth_file(target: str, folder: Path) -> Path | None:
    """A containers auth file (0600, in ``folder``) for ``target``'s registry from the
    environment's credentials; None without them. A file, so the password is never on a
    command line that ``ps`` shows."""
    import base64

    credentials = _credentials()
    if credentials is None:
        return None
    token = base64.b64encode(":".join(credentials).encode()).decode()
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
             *_secret_args(), *_label_args(context), "-f", str(CONTAINERFILE), "-t", tag, str(context)],
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
            ["docker", "buildx", "build", "--load", *_secret_args(), *_label_args(context), "-f", str(CONTAINERFILE),
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


#: the image a pipeline task runs (``modelship compile --image``), set on the package task
PIPELINE_IMAGE_ENV = "MODELSHIP_PIPELINE_IMAGE"
#: where the Bento sits in its image, and what starts it (as bentos/Containerfile has it)
BENTO_DIR = "/home/bentoml/bento"
BENTO_ENV = {
    "BENTOML_HOME": "/home/bentoml",
    "BENTOML_DO_NOT_TRACK": "true",
    "MODELSHIP_HOME": "/var/lib/modelship",
    "PYTHONDONTWRITEBYTECODE": "1",
}
BENTO_CMD = ["bentoml", "serve", "bentos.service:ModelService", "--host", "0.0.0.0",
             "--port", "3000"]  # fmt: skip


def missing_packages(bento: Path) -> list[str]:
    """The Bento's requirements this Python does not satisfy (``name==X: Y installed``)."""
    from importlib import metadata

    from packaging.requirements import InvalidRequirement, Requirement

    missing = []
    reqs = bento / "env" / "python" / "requirements.txt"
    for line in reqs.read_text().splitlines() if reqs.is_file() else []:
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        try:
            req = Requirement(line)
        except InvalidRequirement:
            missing.append(f"{line}: not a requirement this check reads")
            continue
        if req.marker is not None and not req.marker.evaluate():
            continue
        try:
            have = metadata.version(req.name)
        except metadata.PackageNotFoundError:
            missing.append(f"{line}: not installed")
            continue
        if req.specifier and not req.specifier.contains(have.split("+")[0], prereleases=True):
            missing.append(f"{line}: {have} installed")
    return missing


class Layered:
    """The Bento added as one layer on top of the pipeline image, assembled in the registry.

    For pipeline pods, which have no container engine and no privileges: nothing is built or
    run. The base is the image this process runs in (``MODELSHIP_PIPELINE_IMAGE``, written into
    the pipeline by ``modelship compile --image``), so the Bento's packages are checked against
    this Python, and they are the ones the gates ran with.
    """

    name = "layered"

    def base(self) -> str | None:
        return os.environ.get(PIPELINE_IMAGE_ENV) or None

    def available(self) -> str | None:
        base = self.base()
        if base is None:
            return f"{PIPELINE_IMAGE_ENV} is not set (a pipeline task gets it from compile)"
        try:
            ref = oci.Reference.parse(base)
        except PackagingError:
            ref = None
        if ref is None or ref.registry == "localhost":
            return (
                f"the pipeline image {base} is not in a registry "
                "(modelship compile --image REGISTRY/modelship@sha256:...)"
            )
        return None

    def build(self, context: Path, tag: str, log: Path) -> Image:
        """The Bento's layer, written next to ``log``; the base is read when it is pushed."""
        missing = missing_packages(context)
        if missing:
            raise PackagingError(
                f"the pipeline image {self.base()} lacks what this Bento needs: "
                + "; ".join(missing),
                hint="build the pipeline image with them (make pipeline-image EXTRAS=...), "
                "or package where buildah or docker can build the Bento's own image",
            )
        layout = log.parent / "oci-image"
        layout.mkdir(parents=True, exist_ok=True)
        layer = oci.folder_layer(context, BENTO_DIR, layout / "layer.tar.gz",
                                 empty_dirs=(BENTO_ENV["MODELSHIP_HOME"],))  # fmt: skip
        labels = (yaml.safe_load((context / "bento.yaml").read_text()) or {}).get("labels") or {}
        (layout / "layer.json").write_text(json.dumps({
            "digest": layer.digest, "diff_id": layer.diff_id, "size": layer.size,
            "base": self.base(), "bento": tag,
            "labels": {**{str(k): str(v) for k, v in labels.items()},
                       BENTO_DIGEST_LABEL: bento_digest(context)},
        }))  # fmt: skip
        with log.open("a") as out:
            out.write(f"Bento {tag} as layer {layer.digest} ({layer.size} bytes)\n")
        return Image(tag, layer.digest, self.name, f"{layer.size / 1e3:.0f} kB Bento layer",
                     layout=str(layout))  # fmt: skip

    def push(self, image: Image, target: str, log: Path) -> str:
        """Read the base's manifest and config, add the layer, upload what the target lacks
        (the base's layers are mounted within one registry, else copied) and the manifest.
        Credentials (``MODELSHIP_REGISTRY_*``) go to the target's registry only."""
        layout = Path(image.layout)
        layer = json.loads((layout / "layer.json").read_text())
        base, dest = oci.Reference.parse(layer["base"]), oci.Reference.parse(target)
        to = oci.Registry(dest.registry, _credentials())
        source = to if base.registry == dest.registry else oci.Registry(base.registry)
        body, media_type, base_digest = source.manifest(base)
        if media_type not in oci.FAMILY:
            raise PackagingError(f"{base}: manifest type {media_type} is not an image manifest")
        manifest = json.loads(body)
        config = json.loads(source.blob(base.repository, manifest["config"]["digest"]))
        run = config.setdefault("config", {})
        env = dict(e.split("=", 1) for e in run.get("Env") or [] if "=" in e)
        run["Env"] = [f"{k}={v}" for k, v in {**env, **BENTO_ENV}.items()]
        run.update(WorkingDir=f"{BENTO_DIR}/src", Cmd=BENTO_CMD, Entrypoint=None,
                   ExposedPorts={"3000/tcp": {}})  # fmt: skip
        run["Labels"] = {
            **(run.get("Labels") or {}), **layer["labels"],
            "org.opencontainers.image.base.name": str(base),
            "org.opencontainers.image.base.digest": base_digest,
            "modelship.bento": layer["bento"],
        }  # fmt: skip
        config.setdefault("rootfs", {"type": "layers", "diff_ids": []})["diff_ids"].append(
            layer["diff_id"]
        )
        config.setdefault("history", []).append(
            {"created_by": f"modelship package: Bento {layer['bento']} at {BENTO_DIR}"}
        )
        config_bytes = json.dumps(config, sort_keys=True).encode()
        config_type, layer_type = oci.FAMILY[media_type]
        manifest.pop("annotations", None)
        manifest["config"] = {"mediaType": config_type, "digest": oci.sha256(config_bytes),
                              "size": len(config_bytes)}  # fmt: skip
        manifest["layers"] = [*manifest["layers"], {"mediaType": layer_type,
                              "digest": layer["digest"], "size": layer["size"]}]  # fmt: skip
        manifest_bytes = json.dumps(manifest, sort_keys=True).encode()
        with log.open("a") as out:
            out.write(f"base {base} is {base_digest}\n")
            for entry in manifest["layers"][:-1]:
                how = oci.copy_blob(source, base.repository, to, dest.repository, entry["digest"])
                out.write(f"base layer {entry['digest']}: {how}\n")
            to.upload(dest.repository, layer["digest"], layout / "layer.tar.gz")
            to.upload(dest.repository, oci.sha256(config_bytes), config_bytes)
            digest = to.put_manifest(dest.repository, dest.tag or "latest", manifest_bytes,
                                     media_type)  # fmt: skip
            out.write(f"pushed {dest} as {digest}\n")
        return digest


#: tried in this order; the first that can work here builds
BUILDERS: dict[str, Callable[[], Builder]] = {
    "docker": DockerBuildx,
    "buildah": Buildah,
    "layered": Layered,
}


def pick_builder(registry: str = "") -> tuple[Builder | None, list[str]]:
    """The first builder that works here, and why each one before it did not. ``registry``
    is the policy's ``package.registry``: the layered builder assembles the image there."""
    why_not: list[str] = []
    for name, make in BUILDERS.items():
        builder = make()
        reason = builder.available()
        if reason is None and name == Layered.name and not registry:
            reason = "needs package.registry (the image is put together in a registry)"
        if reason is None:
            return builder, why_not
        why_not.append(f"{name}: {reason}")
    return None, why_not


def image_ref(bento_name: str, bento_version: str) -> str:
    return f"localhost/{bento_name}:{bento_version}"
