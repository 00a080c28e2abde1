"""Compile every pipeline to KFP IR YAML.

The repository's ``pipelines/`` folder holds the compiled files (checked in; a test compares) and
they ship as package data, so ``modelship submit`` uploads the same bytes a person would.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from kfp import compiler

from modelship.components.package.image import PIPELINE_IMAGE_ENV
from modelship.components.targets.rbac import rbac_manifests
from modelship.core.assets import asset_dir
from modelship.core.errors import InputError
from modelship.core.settings import DEFAULT_SECRET
from modelship.pipelines.deploy import build_deploy
from modelship.pipelines.monitor import build_monitor

#: each pipeline by the file it compiles to, built for a Secret name (or none)
PIPELINES = {"deploy": build_deploy, "monitor": build_monitor}

#: a DNS subdomain name (RFC 1123), as Kubernetes names Secrets
_SECRET_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")

#: the compiled pipelines shipped with modelship
PIPELINE_DIR = asset_dir("pipelines")


def read_ir(path: Path) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """A compiled file's pipeline spec and, where it has one, its platform spec (kfp-kubernetes
    writes the Secret and other Kubernetes settings as a second YAML document)."""
    docs = list(yaml.safe_load_all(Path(path).read_text()))
    return docs[0], (docs[1] if len(docs) > 1 else None)


def compile_all(
    out: Path, image: str | None = None, secret: str | None = DEFAULT_SECRET
) -> list[Path]:
    """Every pipeline's IR into ``out``; with ``image``, every task runs that image; with
    ``secret``, every task gets its settings from that Kubernetes Secret."""
    if secret is not None and not _SECRET_NAME.fullmatch(secret):
        raise InputError(
            f"{secret!r} is not a Kubernetes Secret name",
            hint="lower-case letters, digits, '-' and '.', starting and ending alphanumeric",
        )
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, build in PIPELINES.items():
        path = folder / f"{name}.yaml"
        compiler.Compiler().compile(build(secret), str(path))
        if image is not None:
            with_image(path, image)
        written.append(path)
    # what the pipeline's ServiceAccount may do where it rolls out (`kubectl apply -f`; the
    # namespace is `default` here: `modelship deploy --target k8s --dry-run --namespace NS`
    # prints it for another)
    rbac = folder / "rbac.yaml"
    rbac.write_text(
        "# The pipeline's ServiceAccount, Role and RoleBinding (modelship compile writes this).\n"
        + yaml.safe_dump_all(rbac_manifests("default"), sort_keys=False)
    )
    written.append(rbac)
    return written


def with_image(path: Path, image: str) -> None:
    """Point every executor of the compiled IR at ``image`` (a pushed modelship image).

    The IR names an image per executor (``deploymentSpec.executors.*.container.image``), and
    the package task's environment names it again (the base of a Bento image assembled in a
    pod); only those lines change, so the file stays the compiler's otherwise.
    """
    ir, _ = read_ir(path)
    executors = ir["deploymentSpec"]["executors"]
    current = {e["container"]["image"] for e in executors.values()}
    text = path.read_text()
    for old in current:
        text = text.replace(f"image: {old}\n", f"image: {image}\n")
        text = text.replace(f"value: {old}\n", f"value: {image}\n")
    path.write_text(text)
    changed = next(yaml.safe_load_all(text))["deploymentSpec"]["executors"]
    based = [
        v["value"] for e in changed.values() for v in e["container"].get("env", [])
        if v["name"] == PIPELINE_IMAGE_ENV
    ]  # fmt: skip
    if any(e["container"]["image"] != image for e in changed.values()) or set(based) - {image}:
        raise InputError(
            f"could not write image {image!r} into {path}",
            hint="give a plain image reference: REGISTRY/NAME:TAG or REGISTRY/NAME@sha256:DIGEST",
        )
