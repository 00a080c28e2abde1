"""The policy: what each gate demands of a model, validated when it is loaded.

Every stage of the architecture has its section now, so later stages fill in behaviour, not
shape. Unknown keys are errors (``extra="forbid"``) and numbers are range-checked, so a bad policy
fails before any work starts. Data URIs may use ``{run_id}``, ``{model}`` and ``{version}``,
filled from the model version being deployed.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
Positive = Annotated[float, Field(gt=0.0)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# -- validate ----------------------------------------------------------------------------------


class DataSource(Strict):
    uri: str = Field(description="local path or MLflow artifact URI (runs:/, models:/)")
    format: Literal["auto", "csv", "parquet"] = "auto"


class ValidationData(DataSource):
    target: str = Field(description="column holding the true label or value")


class RangeRule(Strict):
    """Value ranges learned from the reference data, per numeric column."""

    enabled: bool = True
    quantiles: tuple[Fraction, Fraction] = (0.001, 0.999)
    #: widen the learned [low, high] by this share of its width on each side
    widen: Annotated[float, Field(ge=0.0, le=10.0)] = 0.25
    #: share of rows that must fall inside the range
    mostly: Fraction = 0.98

    @model_validator(mode="after")
    def _ordered(self) -> RangeRule:
        if self.quantiles[0] >= self.quantiles[1]:
            raise ValueError("quantiles must be [low, high] with low < high")
        return self


class ColumnRule(Strict):
    """An explicit expectation for one column; overrides what is learned."""

    min: float | None = None
    max: float | None = None
    allow_null: bool | None = None
    mostly: Fraction = 1.0


class DataContract(Strict):
    allow_nulls: bool = False
    ranges: RangeRule = RangeRule()
    columns: dict[str, ColumnRule] = {}


class Direction(StrEnum):
    HIGHER = "higher_is_better"
    LOWER = "lower_is_better"


class MetricName(StrEnum):
    ACCURACY = "accuracy"
    BALANCED_ACCURACY = "balanced_accuracy"
    PRECISION = "precision"
    RECALL = "recall"
    F1 = "f1"
    ROC_AUC = "roc_auc"
    LOG_LOSS = "log_loss"
    RMSE = "rmse"
    MAE = "mae"
    R2 = "r2"


class MetricGate(Strict):
    """One metric: an absolute threshold and/or a limit on regression against the champion."""

    name: MetricName
    #: absolute bar: metric >= threshold (higher is better) or <= threshold (lower is better)
    threshold: float | None = None
    #: largest allowed worsening against the champion, in the metric's units
    max_regression: Annotated[float, Field(ge=0.0)] | None = None
    #: largest allowed worsening against the champion, as a share of the champion's value
    max_relative_regression: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    #: defaults to the metric's natural direction
    direction: Direction | None = None

    @model_validator(mode="after")
    def _something_to_check(self) -> MetricGate:
        if (
            self.threshold is None
            and self.max_regression is None
            and self.max_relative_regression is None
        ):
            raise ValueError(
                "give at least one of threshold, max_regression, max_relative_regression"
            )
        return self


class ModelLoading(Strict):
    #: skops types a model may declare as trusted; anything else is refused before loading
    trusted_types: list[str] = [
        "sklearn.tree._tree.Tree",
        "lightgbm.basic.Booster",
        "lightgbm.sklearn.LGBMClassifier",
        "lightgbm.sklearn.LGBMRegressor",
        "collections.OrderedDict",
    ]
    #: pickle and cloudpickle run code when loaded: refused unless allowed here
    allow_pickle: bool = False
    load_timeout_s: Positive = 300.0


class Validate(Strict):
    validation_data: ValidationData = ValidationData(
        uri="runs:/{run_id}/modelship/validation.parquet", target="target"
    )
    reference_data: DataSource = DataSource(uri="runs:/{run_id}/modelship/reference.parquet")
    contract: DataContract = DataContract()
    model: ModelLoading = ModelLoading()
    metrics: list[MetricGate] = []
    #: classification: the label used as positive class for precision/recall/f1/roc_auc
    positive_label: str | int | None = None


# -- optimize ----------------------------------------------------------------------------------


class Variant(StrEnum):
    FP32 = "fp32"
    INT8_DYNAMIC = "int8_dynamic"
    INT8_STATIC = "int8_static"
    FP16 = "fp16"
    TENSORRT = "tensorrt"
    CUDA = "cuda"


class Equivalence(Strict):
    max_label_disagreement: Fraction = 0.0
    max_probability_diff: Annotated[float, Field(ge=0.0)] = 1e-4
    max_abs_error: Annotated[float, Field(ge=0.0)] = 1e-4
    max_rel_error: Annotated[float, Field(ge=0.0)] = 1e-4


class ApproximationKind(StrEnum):
    """Variants that trade some accuracy for speed; judged by a metric budget, not equivalence."""

    #: fewer trees: a subset of a forest's trees, a prefix of a boosted model's rounds
    ENSEMBLE_PRUNING = "ensemble_pruning"
    #: whole hidden neurons of an MLP removed, so its dense layers shrink
    STRUCTURED_PRUNING = "structured_pruning"
    #: a smaller student trained on the original model's outputs over the reference data
    DISTILLATION = "distillation"


class Approximate(Strict):
    """Approximate variants, off unless ``kinds`` names some."""

    kinds: list[ApproximationKind] = []
    #: largest drop of each named validation metric against the original model, same data, in
    #: the metric's units (a drop is a worsening: lower accuracy, higher rmse)
    max_metric_drop: dict[MetricName, Annotated[float, Field(ge=0.0)]] = {}
    #: an approximate variant wins only when it beats the best exact variant on the objective by
    #: more than this share; smaller gains are within the noise of a shared machine
    min_gain: Annotated[float, Field(ge=0.0, le=10.0)] = 0.1
    #: distillation needs at least this many reference rows to train a student on
    min_reference_rows: Annotated[int, Field(ge=1)] = 200
    #: share of the validation rows held out from the searches: each size is chosen on the rest,
    #: and the budget judged on these, which did not choose it (0: both on every row)
    held_out: Annotated[float, Field(ge=0.0, le=0.9)] = 0.5
    #: fewer validation rows than this would be held out: the searches and the budget share all
    #: of them, and the verdict says the drops were measured on the rows that chose each size
    min_held_out_rows: Annotated[int, Field(ge=1)] = 100

    @model_validator(mode="after")
    def _budget_for_kinds(self) -> Approximate:
        if self.kinds and not self.max_metric_drop:
            raise ValueError(
                "max_metric_drop must name at least one metric (e.g. {accuracy: 0.01}) when "
                "kinds are set: approximate variants are judged by that budget"
            )
        return self


class Optimize(Strict):
    enabled: bool = True
    on_conversion_failure: Literal["native", "reject"] = "native"
    variants: list[Variant] = [Variant.FP32, Variant.INT8_DYNAMIC, Variant.INT8_STATIC]
    equivalence: Equivalence = Equivalence()
    #: largest allowed drop of each validation metric on a variant
    metric_budget: Annotated[float, Field(ge=0.0)] = 0.005
    objective: Literal["latency", "throughput"] = "latency"
    batch_sizes: list[Annotated[int, Field(ge=1, le=65536)]] = [1, 64, 1024]
    intra_op_threads: Annotated[int, Field(ge=0, le=256)] = 1
    approximate: Approximate = Approximate()


# -- package -----------------------------------------------------------------------------------


class Batching(Strict):
    enabled: bool = True
    max_batch_size: Annotated[int, Field(ge=1, le=65536)] = 64
    #: BentoML also sheds (503) a request it expects to miss this: keep it near the p99 SLO
    max_latency_ms: Annotated[float, Field(gt=0.0, le=60000)] = 100.0


class InferenceLog(Strict):
    enabled: bool = True
    #: a folder or pyarrow filesystem URI (s3://bucket/prefix); empty: $MODELSHIP_HOME/inference
    uri: str | None = None
    #: rows per Parquet file, or whatever arrived within flush_interval_s
    flush_rows: Annotated[int, Field(ge=1)] = 1000
    flush_interval_s: Positive = 1.0


class Package(Strict):
    batching: Batching = Batching()
    max_rows_per_request: Annotated[int, Field(ge=1)] = 1024
    max_body_bytes: Annotated[int, Field(ge=1024)] = 1_048_576
    #: auto: build an OCI image where a builder exists, else record it as skipped
    image: Literal["auto", "always", "never"] = "auto"
    #: where the image is pushed: REGISTRY[:PORT]/PATH (no scheme, no tag); the version then
    #: records it by digest (REGISTRY/PATH/NAME@sha256:...). Empty: the image stays in the
    #: builder's local storage, which no cluster can pull from. Credentials come from
    #: MODELSHIP_REGISTRY_USERNAME/PASSWORD; a plain-HTTP registry is declared insecure in
    #: registries.conf, as for every containers tool
    registry: Annotated[
        str, Field(pattern=r"^([a-z0-9]([a-z0-9.-]*[a-z0-9])?(:[0-9]{1,5})?(/[a-z0-9._-]+)+)?$")
    ] = ""
    inference_log: InferenceLog = InferenceLog()
    #: OpenTelemetry spans and BentoML's own traffic metrics on /predict; off, modelship's
    #: metrics still count and time every request, and throughput is 40% higher
    tracing: bool = False
    #: fast: /predict answered in the service's own ASGI layer with greedy batching (about 2x
    #: the throughput); bentoml: BentoML's API and its batching dispatcher. Native models
    #: always take BentoML's path.
    server: Literal["fast", "bentoml"] = "fast"


# -- load test ---------------------------------------------------------------------------------


class LoadStep(Strict):
    rate: Positive
    duration_s: Positive


class Slo(Strict):
    p99_ms: Positive = 100.0
    max_error_rate: Fraction = 0.001
    #: achieved rate must reach this share of the target arrival rate
    min_rate_ratio: Fraction = 0.95


class FindMax(Strict):
    #: rates are doubled from loadtest.rate until a probe breaks the SLO, then bisected
    limit_rate: Positive = 20000.0
    bisections: Annotated[int, Field(ge=0, le=8)] = 3
    probe_s: Positive = 5.0


class LoadTest(Strict):
    enabled: bool = True
    mode: Literal["constant", "stepped", "find_max"] = "constant"
    rate: Positive = 200.0
    duration_s: Positive = 20.0
    warmup_s: Annotated[float, Field(ge=0.0)] = 3.0
    steps: list[LoadStep] = []
    slo: Slo = Slo()
    #: largest allowed p99 worsening against the champion under the same load, as a share
    max_p99_regression: Annotated[float, Field(ge=0.0)] | None = 0.2
    #: a p99 worsening smaller than this is noise on a shared machine, never a regression
    p99_regression_floor_ms: Annotated[float, Field(ge=0.0)] = 10.0
    timeout_ready_s: Positive = 120.0
    #: fixed port for the server under test; empty: a free one
    port: Annotated[int, Field(ge=1, le=65535)] | None = None
    #: CPUs the server is pinned to (taskset), e.g. [0]; empty: not pinned
    server_cpus: list[Annotated[int, Field(ge=0)]] = []
    connections: Annotated[int, Field(ge=1, le=10000)] = 256
    request_timeout_s: Positive = 10.0
    #: the client fell this far behind its schedule: the figures are not trusted
    max_client_lag_ms: Positive = 100.0
    find_max: FindMax = FindMax()

    @model_validator(mode="after")
    def _steps_for_stepped(self) -> LoadTest:
        if self.mode == "stepped" and not self.steps:
            raise ValueError("mode stepped needs steps: [{rate: ..., duration_s: ...}, ...]")
        return self


# -- rollout -----------------------------------------------------------------------------------


class CanaryStep(Strict):
    weight: Annotated[int, Field(ge=0, le=100)]
    #: seconds to wait at this weight; None pauses until promoted by hand
    pause_s: Annotated[float, Field(ge=0.0)] | None = 60.0
    analysis: bool = True


class Analysis(Strict):
    """How a canary step's challenger is held against the champion.

    Every comparison has an allowed effect and a confidence: a step fails only when the data
    show, at ``confidence``, that the challenger is worse by more than the effect allowed, so
    noise on a few requests never fails a model and too few requests are inconclusive.
    """

    #: how sure a failed comparison must be (one-sided)
    confidence: Annotated[float, Field(gt=0.5, lt=1.0)] = 0.95
    #: the challenger's error rate may exceed the champion's by this much (absolute)
    max_error_rate_increase: Fraction = 0.01
    #: mann_whitney: the challenger's latencies against the champion's scaled by
    #: max_p99_ratio plus p99_floor_ms (Mann-Whitney U, as Netflix's Kayenta judges); p99: the
    #: two p99s compared as numbers (no test; noisy on a shared machine)
    latency_check: Literal["mann_whitney", "p99"] = "mann_whitney"
    #: the challenger may be this many times slower than the champion ...
    max_p99_ratio: Positive = 1.5
    #: ... plus this much (ms): sub-millisecond gaps are the machine, not the model
    p99_floor_ms: Annotated[float, Field(ge=0.0)] = 1.0
    #: paired: both versions' answers to the same requests (the gateway mirrors champion
    #: requests to the challenger, rollout.mirror_share); distribution: the two versions'
    #: prediction distributions over different requests (Evidently, below); off: not compared
    prediction_check: Literal["paired", "distribution", "off"] = "paired"
    #: fewer paired answers than this in a step: inconclusive
    min_paired: Annotated[int, Field(ge=1)] = 100
    #: share of paired labels on which the two versions may disagree
    max_label_disagreement: Fraction = 0.05
    #: mean of the largest per-row difference between the two versions' class probabilities;
    #: null: measured and recorded, not judged (a boosted model and a shallow forest calibrate
    #: differently while agreeing on the labels: the demo's v1 and v2 differ by about 0.3)
    max_probability_diff: Fraction | None = None
    #: mean absolute difference between paired regression scores, in the target's units;
    #: null: measured and recorded, not judged (no scale fits every target)
    max_score_diff: Annotated[float, Field(ge=0.0)] | None = None
    #: prediction_check distribution: share of prediction columns that Evidently may call
    #: drifted between the challenger's and the champion's answers before the step fails
    prediction_drift_share: Fraction = 0.5
    #: a distance, not a significance test: two models always differ a little, and with enough
    #: traffic any difference is "significant" (a Z-test failed 1 canary in 10 of the demo's)
    prediction_drift_method: Literal["jensenshannon", "psi", "wasserstein"] = "jensenshannon"
    #: the distance above which the predictions count as drifted
    prediction_drift_threshold: Positive = 0.1
    #: fewer challenger requests than this in a step: inconclusive (the rollout pauses)
    min_requests: Annotated[int, Field(ge=0)] = 100


class BlueGreen(Strict):
    #: seconds the challenger takes mirrored traffic before the analysis that switches over
    analysis_s: Annotated[float, Field(ge=0.0)] = 60.0
    #: share of the champion's requests copied to the challenger meanwhile
    mirror_share: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0


class KubernetesTarget(Strict):
    """Where a Seldon Core v2 or KServe rollout goes, and where its metrics are read."""

    namespace: str = "default"
    #: Prometheus that scrapes the services' /metrics (modelship_requests_total, ...)
    prometheus_url: str = "http://prometheus-server.monitoring.svc:9090"
    #: extra PromQL label matchers for the services, e.g. namespace="models"
    selector: str = ""
    #: KServe's serving.kserve.io/deploymentMode. The canary split (canaryTrafficPercent) needs
    #: revisions, which only the Knative mode keeps: "Knative" on KServe 0.16 and later (the
    #: CRD schemas this project validates against), "Serverless" (its older name) on 0.13-0.15.
    #: "Standard"/"RawDeployment" ignore the split, so they are not offered.
    deployment_mode: Literal["Knative", "Serverless"] = "Knative"
    #: KServe: the Secret whose object-store keys the predictor gets, optional each
    #: (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION, and MLFLOW_S3_ENDPOINT_URL
    #: as AWS_ENDPOINT_URL), so the Bento writes its inference log to package.inference_log.uri;
    #: by default the pipeline's own settings Secret
    storage_secret: str = "modelship-settings"
    #: Seldon Core v2: the Secret named in each Model (spec.secretName) holding the rclone
    #: config that reads its storageUri (its remote's name is the URI's scheme: s3); empty
    #: leaves it to the rclone secrets preloaded on Seldon's servers
    rclone_secret: str = "modelship-rclone"
    #: Seldon Core v2: the Kafka Seldon records requests and answers in (its bootstrap
    #: servers, e.g. seldon-kafka-bootstrap.seldon-mesh:9092) and its topic prefix; the drift
    #: monitor reads the champion's traffic from there
    kafka_bootstrap: str = ""
    kafka_topic_prefix: str = "seldon"


class Rollout(Strict):
    strategy: Literal["canary", "blue_green"] = "canary"
    target: Literal["local", "seldon", "kserve"] = "local"
    kubernetes: KubernetesTarget = KubernetesTarget()
    steps: list[CanaryStep] = [
        CanaryStep(weight=10, pause_s=60.0),
        CanaryStep(weight=50, pause_s=60.0),
        CanaryStep(weight=100, pause_s=0.0),
    ]
    blue_green: BlueGreen = BlueGreen()
    #: share of the champion's requests also sent to the challenger during canary steps: their
    #: answers, paired, are what analysis.prediction_check paired compares
    mirror_share: Fraction = 0.5
    sticky: bool = False
    #: the header that keeps a user on one variant when sticky (else the request id)
    sticky_header: str = "x-user-id"
    analysis: Analysis = Analysis()
    #: failed analyses tolerated before the rollout aborts (each failure measures the step again)
    failure_limit: Annotated[int, Field(ge=0)] = 0
    #: analyses in a row that could not run (metrics or logs unreadable) before it aborts
    consecutive_error_limit: Annotated[int, Field(ge=1)] = 3
    #: seconds the old server keeps answering requests in flight after traffic left it
    drain_s: Annotated[float, Field(ge=0.0)] = 10.0
    #: requests/s the load generator sends through the gateway during the rollout, so a quiet
    #: service still gets a verdict; null: real traffic only
    load_rate: Positive | None = None
    #: seconds a rollout may wait without progress (paused for a person, or inconclusive for
    #: lack of traffic) before it aborts, as Argo Rollouts' progressDeadlineSeconds
    progress_deadline_s: Positive | None = 600.0
    #: how often the controller looks at its status, the gateway and commands
    tick_s: Positive = 0.5
    timeout_ready_s: Positive = 120.0

    @model_validator(mode="after")
    def _weights_rise(self) -> Rollout:
        weights = [s.weight for s in self.steps]
        if not weights:
            raise ValueError("a canary needs at least one step")
        if weights != sorted(weights):
            raise ValueError(f"canary step weights must not decrease, got {weights}")
        return self

    @model_validator(mode="after")
    def _paired_answers_need_a_mirror(self) -> Rollout:
        if self.analysis.prediction_check != "paired":
            return self
        if self.target != "local":
            # the pairs are counted by modelship's gateway; Seldon and KServe expose no such
            # series (and KServe cannot mirror at all)
            raise ValueError(
                f"analysis.prediction_check paired needs modelship's gateway, which pairs the "
                f"two versions' answers; on {self.target} set analysis.prediction_check: "
                "distribution (their logged predictions compared as distributions)"
                + (" and rollout.mirror_share: 0" if self.target == "kserve" else "")
            )
        mirror = (
            self.blue_green.mirror_share if self.strategy == "blue_green" else self.mirror_share
        )
        if mirror <= 0:
            raise ValueError(
                "analysis.prediction_check paired compares both versions' answers to the same "
                "requests, which the gateway mirrors: set rollout.mirror_share above 0 (e.g. "
                "0.5), or analysis.prediction_check: distribution"
            )
        return self


# -- monitor -----------------------------------------------------------------------------------


class Window(Strict):
    """A window is ``rows`` consecutive logged rows, or the rows of ``minutes``."""

    rows: Annotated[int, Field(ge=1)] | None = 5000
    minutes: Positive | None = None

    @model_validator(mode="after")
    def _one_size(self) -> Window:
        if (self.rows is None) == (self.minutes is None):
            raise ValueError("give the window one size: rows or minutes")
        return self


class DriftThresholds(Strict):
    #: the window drifted when at least this share of the features drifted (Evidently's rule)
    drift_share: Fraction = 0.5
    #: per-feature test: auto is Evidently's choice by type and size (ks or wasserstein for
    #: numbers, chi-square, z or Jensen-Shannon for categories); or one test for every feature
    method: Literal["auto", "ks", "wasserstein", "psi", "jensenshannon"] = "auto"
    #: the test's threshold: a p-value for ks, a distance for the others; empty: the test's
    #: default (ks 0.05, wasserstein 0.1, psi 0.1, jensenshannon 0.1)
    threshold: Positive | None = None
    #: the prediction's own drift test counts as a breach too, whatever the features say
    prediction: bool = True


class Labels(Strict):
    """Labels that arrive later, joined to the log by request id, for quality drift."""

    uri: str = Field(description="CSV or Parquet with request_id and the label column")
    column: str = "label"
    metric: Literal["accuracy"] = "accuracy"
    #: the window's quality may be this much below the validation figure
    max_drop: Fraction = 0.05


class Monitor(Strict):
    enabled: bool = True
    window: Window = Window()
    #: a window with fewer rows is inconclusive, never drift
    min_rows: Annotated[int, Field(ge=1)] = 500
    thresholds: DriftThresholds = DriftThresholds()
    labels: Labels | None = None
    #: breached windows in a row before acting (one noisy window is not a trend)
    consecutive_windows: Annotated[int, Field(ge=1)] = 2
    action: Literal["rollback", "alert", "none"] = "rollback"
    #: after acting, breaches are recorded but not acted on for this long
    cooldown_s: Annotated[float, Field(ge=0.0)] = 600.0
    #: POSTed a JSON notice, signed with HMAC-SHA256 of MODELSHIP_NOTIFY_SECRET
    notify_url: str | None = None


# -- the whole policy --------------------------------------------------------------------------


class Policy(Strict):
    validate_: Validate = Field(default=Validate(), alias="validate")
    optimize: Optimize = Optimize()
    package: Package = Package()
    loadtest: LoadTest = LoadTest()
    rollout: Rollout = Rollout()
    monitor: Monitor = Monitor()

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @property
    def validate_stage(self) -> Validate:
        return self.validate_


#: storage every pod of a cluster reaches (pyarrow and MLflow read these schemes)
OBJECT_STORAGE = ("s3://", "gs://", "abfs://", "az://")


def cluster_log_problem(policy: Policy) -> str | None:
    """Why the drift monitor would see nothing of what a cluster serves, or None.

    On KServe the Bento image serves and writes its inference log; anywhere but object storage
    that log stays in the predictor's pod, which the monitor's pod never reads. On Seldon the
    traffic is in Seldon's Kafka, which the monitor must be told.
    """
    log = policy.package.inference_log
    if policy.rollout.target == "seldon" and policy.monitor.enabled:
        if policy.rollout.kubernetes.kafka_bootstrap:
            return None
        return (
            "rollout.kubernetes.kafka_bootstrap is unset: on Seldon Core v2 the served traffic "
            "is recorded in Seldon's Kafka topics, not by the Bento, and the drift monitor "
            "reads it from there. Set rollout.kubernetes.kafka_bootstrap (e.g. "
            "seldon-kafka-bootstrap.seldon-mesh:9092), or monitor.enabled: false"
        )
    if policy.rollout.target != "kserve" or not log.enabled or not policy.monitor.enabled:
        return None
    if log.uri and log.uri.startswith(OBJECT_STORAGE):
        return None
    where = log.uri or "unset (the serving pod's own disk)"
    return (
        f"package.inference_log.uri is {where}: on "
        "KServe the Bento writes its log inside the predictor's pod, and the drift monitor, in "
        "another pod, would never see a request. Set package.inference_log.uri: "
        "s3://BUCKET/inference (the predictor gets the object store's keys from "
        "rollout.kubernetes.storage_secret), or monitor.enabled: false"
    )
