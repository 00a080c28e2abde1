"""Compile every pipeline to KFP IR YAML.

The repository's ``pipelines/`` folder holds the compiled files (checked in; a test compares) and
they ship as package data, so ``modelship submit`` uploads the same bytes a person would.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from kfp import compiler

from modelship.core.assets import asset_dir
from modelship.core.errors import InputError
from modelship.pipelines.deploy import PIPELINES as DEPLOY
from modelship.pipelines.monitor import monitor_pipeline

PIPELINES = {**DEPLOY, "monitor": monitor_pipeline}

#: the compiled pipelines shipped with modelship
PIPELINE_DIR = asset_dir("pipelines")


def compile_all(out: Path, image: str | None = None) -> list[Path]:
    """Every pipeline's IR into ``out``; with ``image``, every task runs that image."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, pipeline in PIPELINES.items():
        path = folder / f"{name}.yaml"
        compiler.Compiler().compile(pipeline, str(path))
        if image is not None:
            with_image(path, image)
        written.append(path)
    return written


def with_image(path: Path, image: str) -> None:
    """Point every executor of the compiled IR at ``image`` (a pushed modelship image).

    The IR names an image per executor (``deploymentSpec.executors.*.container.image``); only
    those lines change, so the file stays the compiler's otherwise.
    """
    ir = yaml.safe_load(path.read_text())
    executors = ir["deploymentSpec"]["executors"]
    current = {e["container"]["image"] for e in executors.values()}
    text = path.read_text()
    for old in current:
        text = text.replace(f"image: {old}\n", f"image: {image}\n")
    path.write_text(text)
    changed = yaml.safe_load(text)["deploymentSpec"]["executors"]
    if any(e["container"]["image"] != image for e in changed.values()):
        raise InputError(
            f"could not write image {image!r} into {path}",
            hint="give a plain image reference: REGISTRY/NAME:TAG or REGISTRY/NAME@sha256:DIGEST",
        )
