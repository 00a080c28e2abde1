"""What one stage hands the next, as typed records (saved as JSON beside the verdict).

A record is written by exactly one stage and read by the ones after it; a field read by name in
three places is a field of a model here, validated when it is read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal, Self

from pydantic import BaseModel, ConfigDict

#: what a model predicts
Task = Literal["classification", "regression"]


class Record(BaseModel):
    """A record saved as ``FILENAME`` in a step's output folder."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    FILENAME: ClassVar[str]

    def save(self, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / self.FILENAME
        path.write_text(self.model_dump_json(indent=2))
        return path

    @classmethod
    def load(cls, folder: Path) -> Self:
        return cls.model_validate_json((folder / cls.FILENAME).read_text())


class OptimizeRecord(Record):
    """The optimize stage's choice: which runtime serves the model, and how to feed it."""

    FILENAME: ClassVar[str] = "optimize.json"

    #: the ONNX variant chosen (``fp32``, ``int8-dynamic``, ...) or ``native`` (the MLflow model)
    variant: str
    reason: str = ""
    input_name: str = "input"
    #: the model's input columns, in order; empty: read them from the model's signature
    columns: list[str] = []
    task: Task | None = None
    classes: list[Any] = []
    p50_us: float | None = None
    speedup_p50: float | None = None
    objective: str | None = None
    #: ONNX Runtime session settings the timings were measured with
    session: dict[str, Any] = {}
    batch_sizes: list[int] = []
    #: the variant is approximate (pruned or distilled): it may answer differently from the
    #: original, within the policy's metric budget
    approximate: bool = False
    #: what the approximation kept, for a person ("37 of 200 trees")
    approximation: str = ""
    #: each budget metric's drop against the original on the validation rows (negative: better)
    metric_drop: dict[str, float] = {}

    @property
    def intra_op_threads(self) -> int:
        return int(self.session.get("intra_op_threads", 1))


class PackagedModel(BaseModel):
    """What it takes to serve one packaged version: its Bento and, where built, its image."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: str
    bento: str
    image: str | None = None
    #: the Bento exported into MLflow (``runs:/RUN/bento/NAME.bento``), for any other machine
    bento_uri: str | None = None
    #: the digest of the Bento's files as they passed the gates
    bento_digest: str | None = None


class PackageRecord(Record):
    """The package stage's output: the Bento (and image) that later stages serve."""

    FILENAME: ClassVar[str] = "package.json"

    version: str
    bento: str
    bento_path: str
    bento_digest: str
    bentoml_home: str
    #: the Bento exported into the deployment's MLflow run
    bento_uri: str | None = None
    #: the Bento's ``serving.json`` (``modelship.bentos.config.ServingConfig``)
    serving: dict[str, Any]
    image: str | None = None
    image_id: str | None = None
    image_builder: str | None = None
    image_status: str = ""

    @property
    def columns(self) -> list[str]:
        return [str(c) for c in self.serving.get("columns", [])]

    @property
    def packaged(self) -> PackagedModel:
        return PackagedModel(
            version=self.version, bento=self.bento, image=self.image,
            bento_uri=self.bento_uri, bento_digest=self.bento_digest,
        )  # fmt: skip
