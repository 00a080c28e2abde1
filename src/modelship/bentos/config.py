"""``serving.json``: what the package stage tells the service, written into the Bento.

The service reads it once, at import, because BentoML's ``@bentoml.service`` and
``@bentoml.api`` take their batching and naming arguments at import time.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

FILENAME = "serving.json"
#: the folder, beside ``bentos/`` in the Bento, that holds the model files
MODEL_DIR = "model"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Batching(Strict):
    enabled: bool = True
    max_batch_size: Annotated[int, Field(ge=1)] = 64
    max_latency_ms: Annotated[float, Field(gt=0)] = 100.0


class InferenceLogConfig(Strict):
    enabled: bool = True
    #: a folder or a pyarrow filesystem URI (s3://, gs://, ...); None: $MODELSHIP_HOME/inference
    uri: str | None = None
    flush_rows: Annotated[int, Field(ge=1)] = 1000
    flush_interval_s: Annotated[float, Field(gt=0)] = 1.0


class ServingConfig(Strict):
    model_name: str
    model_version: str
    #: sha256 of the registered model's artifact tree (its identity in the registry)
    model_digest: str
    #: the optimize stage's choice: an ONNX variant (fp32, int8_dynamic, ...) or native
    variant: str
    task: Literal["classification", "regression"] | None = None
    classes: list[int | float | str] = []
    columns: list[str]
    input_name: str = "input"
    #: sha256 of each file under model/, checked before the model is loaded
    files: dict[str, str]
    batching: Batching = Batching()
    max_rows_per_request: Annotated[int, Field(ge=1)] = 1024
    max_body_bytes: Annotated[int, Field(ge=1024)] = 1_048_576
    #: seconds a /predict body may stall between two chunks before the request is refused
    #: (408): a client that stops sending mid-body must not hold its connection forever
    body_timeout_s: Annotated[float, Field(gt=0)] = 30.0
    intra_op_threads: Annotated[int, Field(ge=0)] = 1
    #: OpenTelemetry spans and BentoML's traffic metrics on /predict (off: 40% more throughput)
    tracing: bool = False
    #: fast: /predict answered in the service's ASGI layer (bentos/fastpath.py); bentoml: by
    #: BentoML's own API and batching dispatcher
    server: Literal["fast", "bentoml"] = "fast"
    inference_log: InferenceLogConfig = InferenceLogConfig()

    @property
    def onnx(self) -> bool:
        return self.variant != "native"

    def log_uri(self, env: dict[str, str] | None = None) -> str:
        """Where this version's inference log goes: env, then the policy, then the home folder."""
        env = dict(os.environ) if env is None else env
        root = env.get("MODELSHIP_INFERENCE_LOG") or self.inference_log.uri
        if not root:
            home = Path(env.get("MODELSHIP_HOME") or ".modelship").resolve()
            root = str(home / "inference")
        return f"{root.rstrip('/')}/{self.model_name}/v{self.model_version}"


def load(bento_src: Path) -> ServingConfig:
    path = bento_src / FILENAME
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: this service runs inside a Bento built by the package stage "
            "(modelship deploy MODEL), which writes it"
        )
    return ServingConfig.model_validate_json(path.read_text())
