"""Compile every pipeline to KFP IR YAML beside this file (checked in; a test compares)."""

from __future__ import annotations

from pathlib import Path

from kfp import compiler

from pipelines.deploy import PIPELINES as DEPLOY
from pipelines.monitor import monitor_pipeline

PIPELINES = {**DEPLOY, "monitor": monitor_pipeline}

PIPELINE_DIR = Path(__file__).resolve().parent


def compile_all(out: Path | None = None) -> list[Path]:
    folder = Path(out) if out else PIPELINE_DIR
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, pipeline in PIPELINES.items():
        path = folder / f"{name}.yaml"
        compiler.Compiler().compile(pipeline, str(path))
        written.append(path)
    return written
