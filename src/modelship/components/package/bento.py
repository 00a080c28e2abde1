"""Assemble a Bento's build context from the optimize stage's output, and build it.

The context holds the service (``modelship.bentos``, copied in as the Bento's own ``bentos``
package: it imports nothing else of modelship), ``model/`` (the chosen ONNX file, or the MLflow
model itself where the optimize stage chose ``native``), ``serving.json`` and
``constraints.txt``; ``bentofile.yaml`` names them. The Bento's packages and the constraints on
everything they pull in are the versions installed here, which the deploy's checks ran against
(``make venv`` and the pipeline image install the tested lock, ``constraints.txt``).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from importlib import metadata
from importlib.resources import files
from pathlib import Path

import yaml

from modelship import bentos
from modelship.bentos.config import FILENAME, MODEL_DIR, Batching, InferenceLogConfig, ServingConfig
from modelship.bentos.model import file_digests
from modelship.core.errors import PackagingError
from modelship.core.records import OptimizeRecord
from modelship.policies.schema import Package

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


def environment_pins() -> list[str]:
    """``name==version`` for every distribution installed here, as a pip constraints file.

    Local version labels (``torch==2.13.0+cpu``) are dropped: an index serves the public one.
    """
    pins = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name and name.lower() != "modelship":
            pins[name.lower()] = f"{name}=={dist.version.split('+')[0]}"
    return [pins[key] for key in sorted(pins)]


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
    model_name: str, version: str, digest: str, record: OptimizeRecord, columns: list[str],
    policy: Package, files: dict[str, str],
) -> ServingConfig:  # fmt: skip
    return ServingConfig(
        model_name=model_name, model_version=version, model_digest=digest,
        variant=record.variant, task=record.task,
        classes=list(record.classes), columns=columns,
        input_name=record.input_name, files=files,
        batching=Batching(**policy.batching.model_dump()),
        max_rows_per_request=policy.max_rows_per_request, max_body_bytes=policy.max_body_bytes,
        intra_op_threads=record.intra_op_threads,
        inference_log=InferenceLogConfig(**policy.inference_log.model_dump()),
        tracing=policy.tracing, server=policy.server,
    )  # fmt: skip


def assemble(
    context: Path, optimized: Path, model_dir: Path, record: OptimizeRecord
) -> tuple[dict[str, str], list[str]]:
    """Copy the service and the model into ``context``; the model files' digests and packages."""
    if context.exists():
        shutil.rmtree(context)
    (context / "bentos").mkdir(parents=True)
    for source in files(bentos).iterdir():
        if source.name.endswith(".py"):
            (context / "bentos" / source.name).write_bytes(source.read_bytes())
    target = context / MODEL_DIR
    packages = list(SERVING_PACKAGES)
    if record.variant == "native":
        shutil.copytree(model_dir, target / "mlflow_model")
        packages += ["mlflow", "pandas", "scikit-learn"]
        reqs = model_dir / "requirements.txt"
        extra = [ln.strip() for ln in reqs.read_text().splitlines()] if reqs.exists() else []
    else:
        target.mkdir()
        shutil.copy2(optimized / "model.onnx", target / "model.onnx")
        extra = []
    (context / "constraints.txt").write_text("\n".join(environment_pins()) + "\n")
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
