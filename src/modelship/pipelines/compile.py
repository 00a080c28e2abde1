"""Compile every pipeline to KFP IR YAML.

The repository's ``pipelines/`` folder holds the compiled files (checked in; a test compares) and
they ship as package data, so ``modelship submit`` uploads the same bytes a person would.
"""

from __future__ import annotations

from pathlib import Path

from kfp import compiler

from modelship.core.assets import asset_dir
from modelship.pipelines.deploy import PIPELINES as DEPLOY
from modelship.pipelines.monitor import monitor_pipeline

PIPELINES = {**DEPLOY, "monitor": monitor_pipeline}

#: the compiled pipelines shipped with modelship
PIPELINE_DIR = asset_dir("pipelines")


def compile_all(out: Path) -> list[Path]:
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, pipeline in PIPELINES.items():
        path = folder / f"{name}.yaml"
        compiler.Compiler().compile(pipeline, str(path))
        written.append(path)
    return written
