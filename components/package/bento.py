"""Assemble a Bento's build context from the optimize stage's output, and build it.

The context holds the ``bentos`` package (the service), ``model/`` (the chosen ONNX file, or the
MLflow model itself where the optimize stage chose ``native``), ``serving.json`` and the
project's ``constraints.txt``; ``bentofile.yaml`` names them. Versions of the Bento's Python
packages are the ones installed here, which the deploy's checks ran against.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

import bentos
from bentos.config import FILENAME, MODEL_DIR, Batching, InferenceLogConfig, ServingConfig
from bentos.model import file_digests
from modelship.errors import PackagingError
from policies.schema import Package

PROJECT = Path(bentos.__file__).resolve().parents[1]
#: what every Bento installs beside bentoml (which bentoml pins itself); ``native`` Bentos add
#: mlflow and the model's own requirements
SERVING_PACKAGES = ["onnxruntime", "numpy", "pyarrow", "pydantic", "prometheus-client"]


@dataclass(frozen=True)
class BuiltBento:
    tag: str
    name: str
    version: str
    path: Path
    config: ServingConfig


def bento_name(model_name: str) -> str:
    name = re.sub(r"[^a-z0-9_.-]+", "-", model_name.lower()).strip("-._")
    return f"modelship-{name}"


def bento_version(version: str, digest: str) -> str:
    return f"v{version}-{digest.removeprefix('sha256:')[:12]}"


def _pinned(names: list[str]) -> list[str]:
    pins = []
    for name in names:
        if name == "onnxruntime":  # the GPU build installs under its own name
            for dist in ("onnxruntime-gpu", "onnxruntime"):
                try:
                    pins.append(f"{dist}=={metadata.version(dist)}")
                    break
                except metadata.PackageNotFoundError:
                    continue
            continue
        pins.append(f"{name}=={metadata.version(name)}")
    return pins


def serving_config(
    model_name: str, version: str, digest: str, record: dict[str, Any], columns: list[str],
    policy: Package, files: dict[str, str],
) -> ServingConfig:  # fmt: skip
    return ServingConfig(
        model_name=model_name, model_version=version, model_digest=digest,
        variant=str(record["variant"]), task=record.get("task"),
        classes=list(record.get("classes", [])), columns=columns,
        input_name=str(record.get("input_name", "input")), files=files,
        batching=Batching(**policy.batching.model_dump()),
        max_rows_per_request=policy.max_rows_per_request, max_body_bytes=policy.max_body_bytes,
        intra_op_threads=int(record.get("session", {}).get("intra_op_threads", 1)),
        inference_log=InferenceLogConfig(**policy.inference_log.model_dump()),
        tracing=policy.tracing, server=policy.server,
    )  # fmt: skip


def assemble(
    context: Path, optimized: Path, model_dir: Path, record: dict[str, Any]
) -> tuple[dict[str, str], list[str]]:
    """Copy the service and the model into ``context``; the model files' digests and packages."""
    if context.exists():
        shutil.rmtree(context)
    (context / "bentos").mkdir(parents=True)
    for source in Path(bentos.__file__).parent.glob("*.py"):
        shutil.copy2(source, context / "bentos" / source.name)
    target = context / MODEL_DIR
    packages = list(SERVING_PACKAGES)
    if record["variant"] == "native":
        shutil.copytree(model_dir, target / "mlflow_model")
        packages += ["mlflow", "pandas", "scikit-learn"]
        reqs = model_dir / "requirements.txt"
        extra = [ln.strip() for ln in reqs.read_text().splitlines()] if reqs.exists() else []
    else:
        target.mkdir()
        shutil.copy2(optimized / "model.onnx", target / "model.onnx")
        extra = []
    constraints = PROJECT / "constraints.txt"
    if constraints.exists():
        shutil.copy2(constraints, context / "constraints.txt")
    else:  # an installed modelship without its source tree: the pins below still hold
        (context / "constraints.txt").write_text("")
    pins = _pinned(packages)
    pinned_names = {p.split("==")[0] for p in pins}
    pins += [
        r
        for r in extra
        if r and not r.startswith("#") and re.split(r"[=<>!~ ]", r)[0] not in pinned_names
    ]
    return file_digests(target), pins


def build(
    context: Path, config: ServingConfig, packages: list[str], *, labels: dict[str, str],
    bentoml_home: Path, log: Path,
) -> BuiltBento:  # fmt: skip
    """``bentoml build`` of ``context``; an existing Bento of the same tag is replaced.

    Runs ``bentoml`` in its own process from inside the context, so the service it imports is
    the copy in the context, never the ``bentos`` package this process already imported.
    """
    (context / FILENAME).write_text(config.model_dump_json(indent=2))
    name = bento_name(config.model_name)
    version = bento_version(config.model_version, config.model_digest)
    bentofile = {
        "service": "bentos.service:ModelService",
        "name": name,
        "labels": labels,
        "include": ["bentos/*.py", f"{MODEL_DIR}/**", FILENAME, "constraints.txt"],
        "python": {"packages": packages, "lock_packages": False},
    }
    (context / "bentofile.yaml").write_text(yaml.safe_dump(bentofile, sort_keys=False))
    tag = f"{name}:{version}"
    env = {**os.environ, "BENTOML_HOME": str(bentoml_home), "BENTOML_DO_NOT_TRACK": "true"}
    env.pop("PYTHONPATH", None)
    bentoml = [sys.executable, "-m", "bentoml"]
    with log.open("a") as out:
        subprocess.run([*bentoml, "delete", tag, "-y"], cwd=context, env=env, stdout=out,
                       stderr=subprocess.STDOUT, check=False)  # fmt: skip
        done = subprocess.run(
            [*bentoml, "build", ".", "-f", "bentofile.yaml", "--version", version, "-o", "tag"],
            cwd=context, env=env, stdout=out, stderr=subprocess.STDOUT, check=False, timeout=600,
        )  # fmt: skip
    if done.returncode != 0:
        tail = " | ".join(log.read_text().strip().splitlines()[-4:])
        raise PackagingError(f"bentoml build of {tag} failed: {tail}", hint=f"the log is {log}")
    path = bentoml_home / "bentos" / name / version
    if not (path / "bento.yaml").is_file():
        raise PackagingError(f"bentoml build said it built {tag} but {path} holds no Bento")
    return BuiltBento(tag, name, version, path, config)


def describe(bento: BuiltBento) -> dict[str, Any]:
    return {
        "bento": bento.tag,
        "bento_path": str(bento.path),
        "serving": json.loads(bento.config.model_dump_json()),
    }
