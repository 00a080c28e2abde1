"""One monitor pass: every whole window of the champion's inference log since the last pass.

For each window: data drift of the features against the champion's reference data, and drift
of its predictions against what the champion predicts for the reference rows (the fast path in
:mod:`components.monitor.drift`, equal to Evidently's verdicts); quality against the labels
file where one is given. Then :func:`~components.monitor.decide.decide` and, when it says so,
the rollback (traffic first) and the notice; only then the window's Evidently HTML report and
metrics go to MLflow (experiment ``modelship-monitoring``), so reporting never delays acting.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from modelship.components.datasource import read_frame
from modelship.components.monitor import notify
from modelship.components.monitor.decide import decide
from modelship.components.monitor.drift import Reference, evidently_report
from modelship.components.monitor.kafka_log import read_topics
from modelship.components.monitor.rollback import (
    ClusterSwitch,
    RegistryBehind,
    RollbackDone,
    previous_of,
    record_rollback,
    rollback,
)
from modelship.components.monitor.state import (
    Action,
    MonitorStateStore,
    MonitorStatus,
    MonitorStore,
    PendingRollback,
    WindowOutcome,
    WindowRecord,
)
from modelship.components.monitor.window import Cut, read_log, windows
from modelship.components.serving.bentostore import present_bento
from modelship.components.serving.packaged import packaged_version
from modelship.components.targets.cluster import Deployable
from modelship.components.targets.local import GatewayRouter
from modelship.components.targets.seldon import model_name as seldon_model_name
from modelship.core.errors import DataError, InputError, RollbackFailed
from modelship.core.records import PackagedModel
from modelship.core.tags import TAG_LIVE_SINCE, TAG_REPORT
from modelship.policies.schema import Labels, Monitor, Policy
from modelship.registry.client import ModelRef, Registry

EXPERIMENT = "modelship-monitoring"
Say = Callable[[str], None]


@dataclass
class Baseline:
    """What every window of one champion is compared with, computed once per pass."""

    features: Reference
    predictions: Reference | None
    frame: pd.DataFrame
    kinds: dict[str, str]
    note: str = ""
    #: the champion's accuracy on the reference rows: what late labels are held to
    quality: float | None = None


@dataclass
class PassResult:
    windows: list[WindowRecord] = field(default_factory=list)
    actions: list[str] = field(default_factory=list)
    rollback: RollbackDone | None = None
    waiting_rows: int = 0


def _kinds(frame: pd.DataFrame) -> dict[str, str]:
    return {c: "num" if pd.api.types.is_numeric_dtype(frame[c]) else "cat" for c in frame}


def _bento_predictions(
    bentoml_home: Path, packaged: PackagedModel, frame: pd.DataFrame
) -> pd.Series:
    """The champion's own predictions for the reference rows, from its Bento's model (the Bento
    fetched from MLflow when this machine's store lacks it; its model files checked against
    their digests before it loads)."""
    from modelship.bentos import config as serving_config
    from modelship.bentos import model as serving_model

    src = present_bento(packaged, bentoml_home) / "src"
    config = serving_config.load(src)
    predictor = serving_model.load(config, src / serving_config.MODEL_DIR)
    x = frame[config.columns].to_numpy(np.float32)
    return pd.Series([o["prediction"] for o in predictor.predict(x)], name="prediction")


def baseline(
    policy: Policy, registry: Registry, champion: ModelRef, bentoml_home: Path
) -> Baseline:
    data = policy.validate_stage.reference_data
    context = {"run_id": champion.run_id or "", "model": champion.name,
               "version": champion.version}  # fmt: skip
    full = read_frame(data.uri, data.format, context)
    target = policy.validate_stage.validation_data.target
    frame = full.drop(columns=[c for c in (target,) if c in full])
    kinds = _kinds(frame)
    th = policy.monitor.thresholds
    method = None if th.method == "auto" else th.method
    features = Reference(frame, kinds, method=method, threshold=th.threshold,
                         drift_share=th.drift_share)  # fmt: skip
    packaged, _ = packaged_version(registry, champion)
    if not (th.prediction and packaged):
        why = "monitor.thresholds.prediction is false" if packaged else "the champion has no Bento"
        return Baseline(features, None, frame, kinds, note=f"prediction drift not judged: {why}")
    predicted = _bento_predictions(bentoml_home, packaged, frame).to_frame()
    kind = _kinds(predicted)
    predictions = Reference(predicted, kind, drift_share=1.0)
    quality = None
    if policy.monitor.labels is not None and target in full:
        truth = full[target].astype(str).to_numpy()
        quality = float(np.mean(predicted["prediction"].astype(str).to_numpy() == truth))
    return Baseline(features, predictions, frame, kinds, quality=quality)


def quality_check(base: Baseline, window: pd.DataFrame, labels: pd.DataFrame | None,
                  spec: Labels | None, min_rows: int) -> tuple[str | None, dict[str, Any]]:  # fmt: skip
    """A drop in accuracy on the window's rows whose labels arrived; (reason, figures)."""
    if spec is None or labels is None or base.quality is None:
        return None, {}
    keys = ["request_id", "row"] if "row" in labels else ["request_id"]
    joined = window.merge(labels[[*keys, spec.column]], on=keys, how="inner")
    figures: dict[str, Any] = {"labelled_rows": len(joined)}
    if len(joined) < max(20, min_rows // 5):
        return None, figures  # too few labels yet: quality is not judged
    accuracy = float(np.mean(joined["prediction"].astype(str) == joined[spec.column].astype(str)))
    figures["accuracy"] = accuracy
    if base.quality - accuracy > spec.max_drop:
        return (f"accuracy {accuracy:.3f} on {len(joined)} labelled rows against "
                f"{base.quality:.3f} on the reference (monitor.labels.max_drop "
                f"{spec.max_drop:g})"), figures  # fmt: skip
    return None, figures


def judge(base: Baseline, cut: Cut, version: str, min_rows: int, skipped_rows: int,
          labels: pd.DataFrame | None = None, spec: Labels | None = None) -> WindowRecord:  # fmt: skip
    start, end, window = cut
    common: dict[str, Any] = {"version": version, "start_us": start, "end_us": end, "rows": len(window),
              "skipped_rows": skipped_rows}  # fmt: skip
    if len(window) < min_rows:
        return WindowRecord(**common, outcome=WindowOutcome.INCONCLUSIVE,
                            reason=f"{len(window)} rows, fewer than min_rows {min_rows}")  # fmt: skip
    started = time.perf_counter()
    report = base.features.compare(window[list(base.kinds)])
    drifted = sorted(c for c, d in report.columns.items() if d.drifted)
    figures: dict[str, Any] = {"drift_share": report.share, "drifted_count": report.drifted_count}
    reasons = []
    if report.dataset_drift:
        reasons.append(f"{len(drifted)} of {len(report.columns)} features drifted "
                       f"({', '.join(drifted[:5])}{', ...' if len(drifted) > 5 else ''})")  # fmt: skip
    if base.predictions is not None:
        pred = base.predictions.compare(window[["prediction"]])
        column = pred.columns["prediction"]
        figures["prediction_score"] = column.score
        figures["prediction_method"] = column.method
        if column.drifted:
            reasons.append(f"predictions drifted ({column.method} {column.score:.3g})")
    quality, more = quality_check(base, window, labels, spec, min_rows)
    figures.update(more)
    if quality:
        reasons.append(quality)
    figures["judge_s"] = time.perf_counter() - started
    outcome = WindowOutcome.DRIFT if reasons else WindowOutcome.STABLE
    reason = "; ".join(reasons) or (
        f"{report.drifted_count} of {len(report.columns)} features drifted, under the share "
        "that counts"
    )
    return WindowRecord(**common, outcome=outcome, reason=reason, share=report.share,
                        drifted=drifted, figures=figures)  # fmt: skip


def _log_window(registry: Registry, base: Baseline, window: pd.DataFrame,
                record: WindowRecord, model: str) -> str | None:  # fmt: skip
    """The window's Evidently report (HTML) and figures as one MLflow run; its id."""
    import mlflow

    from modelship.core.settings import Settings
    from modelship.registry.experiments import ensure_experiment

    experiment = ensure_experiment(registry.client, Settings.from_env(), EXPERIMENT)
    options = base.features.options
    _, snapshot = evidently_report(base.frame, window[list(base.kinds)], base.kinds,
                                   method=options.method, threshold=options.threshold,
                                   drift_share=options.drift_share)  # fmt: skip
    if snapshot is None:  # every column skipped: nothing for Evidently to draw
        return None
    with (
        tempfile.TemporaryDirectory() as tmp,
        mlflow.start_run(
            experiment_id=experiment, run_name=f"{model} v{record.version} window"
        ) as run,
    ):
        html = Path(tmp) / "drift_report.html"
        snapshot.save_html(str(html))
        mlflow.log_artifact(str(html), "monitor")
        mlflow.log_text(record.model_dump_json(indent=2), "monitor/window.json")
        mlflow.set_tags({"model": model, "version": record.version,
                         "outcome": str(record.outcome)})  # fmt: skip
        mlflow.log_metrics({"rows": record.rows, "skipped_rows": record.skipped_rows,
                            **{k: float(v) for k, v in record.figures.items()
                               if isinstance(v, int | float)}})  # fmt: skip
        return str(run.info.run_id)


def _notice(model: str, action: str, reason: str, **more: Any) -> dict[str, Any]:
    return {"source": "modelship", "model": model, "action": action, "reason": reason,
            "at": time.time(), **more}  # fmt: skip


def run_pass(
    model: str,
    policy: Policy,
    *,
    registry: Registry,
    home: Path,
    bentoml_home: Path,
    log_root: str,
    router: GatewayRouter | None,
    secret: str = "",
    log_reports: bool = True,
    say: Say = lambda m: None,
    store: MonitorStateStore | None = None,
    cluster: ClusterSwitch | None = None,
) -> PassResult:
    """Judge every whole window since the last pass; act on what ``decide`` says.

    ``store`` keeps the cursor and breaches (a file under ``home`` when None); the pass holds
    its lease throughout, so two passes never act on the same champion.
    """
    store = store or MonitorStore(home / "monitor", model)
    store.acquire()
    try:
        finished = _finish_interrupted(store, registry, model, router, cluster)
        if finished:
            say(finished)
        champion = registry.champion(model)
        if champion is None:
            raise InputError(f"{model} has no champion to monitor",
                             hint=f"deploy a version first: modelship deploy {model}")  # fmt: skip
        result = _judge(model, policy, champion, store, registry, bentoml_home, log_root, router,
                        secret, log_reports, say, cluster)  # fmt: skip
        if finished:
            result.actions.insert(0, finished)
        return result
    finally:
        store.release()


def _finish_interrupted(store: MonitorStateStore, registry: Registry, model: str,
                        router: GatewayRouter | None, cluster: ClusterSwitch | None) -> str | None:  # fmt: skip
    """Finish the rollback a killed pass left half done (saved before it moved anything), so
    traffic and aliases agree again; what was done, or None when nothing was pending."""
    status = store.load()
    pending = status.rolling_back if status is not None else None
    if status is None or pending is None:
        return None
    champion = registry.champion(model)
    reason = f"{pending.reason} (finished by the next pass: the one that began it was stopped)"
    if champion is not None and champion.version == pending.rolled_back:
        done = rollback(registry, champion, reason, router, cluster=cluster)
        text = (f"finished the rollback of v{done.rolled_back} to v{done.restored} that a "
                f"stopped pass began ({done.switched})")  # fmt: skip
    elif champion is not None and champion.version == pending.restored:
        current = registry.resolve(model, version=pending.rolled_back)
        record_rollback(registry, current, champion, reason)
        text = f"finished recording the rollback of v{pending.rolled_back} to v{pending.restored}"
    else:
        text = (f"dropped the unfinished rollback of v{pending.rolled_back}: the champion is "
                f"{'v' + champion.version if champion else 'gone'} now")  # fmt: skip
    store.save(status.model_copy(update={"rolling_back": None,
                                         "events": [*status.events, f"{time.time():.3f} {text}"]}))  # fmt: skip
    return text


def live_since_us(ref: ModelRef) -> int:
    """When ``ref`` began to serve this time (``TAG_LIVE_SINCE``), in UTC microseconds; 0 for a
    version promoted before that tag existed (its whole log counts, as it always did)."""
    try:
        return int(float(ref.tags.get(TAG_LIVE_SINCE) or 0) * 1e6)
    except ValueError:
        return 0


def _judge(
    model: str, policy: Policy, champion: ModelRef, store: MonitorStateStore, registry: Registry,
    bentoml_home: Path, log_root: str, router: GatewayRouter | None, secret: str,
    log_reports: bool, say: Say, cluster: ClusterSwitch | None = None,
) -> PassResult:  # fmt: skip
    status = store.load()
    since = live_since_us(champion)
    if status is None or status.version != champion.version or status.cursor_us < since:
        # a new champion, or this one serving again: its log counts from when it began to
        # serve this time, never rows (or breaches) from an earlier time it served
        status = MonitorStatus(model=model, version=champion.version, cursor_us=since)
    mon = policy.monitor
    result = PassResult()
    has_previous = previous_of(registry, model) is not None
    try:
        base = baseline(policy, registry, champion, bentoml_home)
    except (DataError, OSError, ValueError) as e:
        # an unreadable reference says nothing about the model: alert, never roll back
        record = WindowRecord(version=champion.version, start_us=status.cursor_us,
                              end_us=status.cursor_us, rows=0, outcome=WindowOutcome.ERROR,
                              reason=f"the reference data could not be read: {e}")  # fmt: skip
        _act(store, status, record, mon, has_previous, result, model, registry, champion,
             router, secret, say, cluster)  # fmt: skip
        return result
    if base.note:
        say(base.note)
    k8s = policy.rollout.kubernetes
    if policy.rollout.target == "seldon" and k8s.kafka_bootstrap:
        # Triton serves on Seldon, not the Bento: the traffic is what Seldon put in Kafka.
        # Its tensors carry no names: the reference data's columns give the model's order.
        seldon_name = seldon_model_name(Deployable(model, champion.version))
        say(f"reading {seldon_name}'s requests from Kafka at {k8s.kafka_bootstrap}")
        log = read_topics(k8s.kafka_bootstrap, k8s.kafka_topic_prefix, k8s.namespace,
                          seldon_name, list(base.kinds), status.cursor_us)  # fmt: skip
    else:
        uri = f"{log_root.rstrip('/')}/{model}/v{champion.version}"
        log = read_log(uri, list(base.kinds), status.cursor_us)
    if log.bad_files or log.bad_rows:
        say(f"skipped {len(log.bad_files)} unreadable log file(s) and {log.bad_rows} bad rows")
    labels = None
    if mon.labels is not None:
        try:
            labels = read_frame(mon.labels.uri)
            labels["request_id"] = labels["request_id"].astype(str)
        except (DataError, KeyError) as e:
            say(f"labels not read, quality not judged this pass: {e}")
    cut = windows(log.rows, mon.window)
    result.waiting_rows = len(log.rows) - sum(len(w[2]) for w in cut)
    for i, piece in enumerate(cut):
        frame = piece[2]
        skipped = log.bad_rows if i == 0 else 0
        record = judge(base, piece, champion.version, mon.min_rows, skipped, labels, mon.labels)
        if log.bad_files and i == 0:
            record = record.model_copy(update={"figures": {**record.figures,
                                                           "bad_files": len(log.bad_files)}})  # fmt: skip
        status = _act(
            store,
            status,
            record,
            mon,
            has_previous,
            result,
            model,
            registry,
            champion,
            router,
            secret,
            say,
            cluster,
        )
        if log_reports and record.outcome is not WindowOutcome.INCONCLUSIVE:
            run_id = _log_window(registry, base, frame, record, model)
            result.windows[-1] = result.windows[-1].model_copy(update={"run_id": run_id})
            if result.rollback is not None and run_id:
                # written after the rollback (it never waits for a report), then linked
                registry.set_tag(champion, TAG_REPORT, f"runs:/{run_id}/monitor/drift_report.html")
        if result.rollback is not None:
            break  # a new champion: its own log, its own reference, from the next pass
    return result


def _act(store: MonitorStateStore, status: MonitorStatus, record: WindowRecord, mon: Monitor,
         has_previous: bool, result: PassResult, model: str, registry: Registry,
         champion: ModelRef, router: GatewayRouter | None, secret: str,
         say: Say, cluster: ClusterSwitch | None = None) -> MonitorStatus:  # fmt: skip
    decision = decide(status, record, mon, has_previous, time.time())
    status = decision.status
    if decision.action is Action.ROLLBACK:
        previous = previous_of(registry, model)
        # saved before anything moves: a pass killed half way is finished by the next one
        status = status.model_copy(update={"rolling_back": PendingRollback(
            rolled_back=champion.version, restored=previous.version if previous else "",
            reason=decision.reason)})  # fmt: skip
    store.save(status)
    result.windows.append(record)
    say(f"window of {record.rows} rows: {record.outcome}: {record.reason}")

    def tell(notice: dict[str, Any]) -> None:
        # an undelivered notice is shown, never a reason to stop
        problem = notify.send(mon.notify_url, secret, notice)
        if problem:
            say(problem)

    if decision.action is Action.ROLLBACK:
        try:
            done = rollback(registry, champion, decision.reason, router, cluster=cluster)
        except RollbackFailed as e:
            if not isinstance(e, RegistryBehind):  # nothing moved: nothing for a next pass
                store.save(status.model_copy(update={"rolling_back": None}))
            tell(_notice(model, "rollback_failed", str(e)))
            raise
        status = status.model_copy(update={"rolling_back": None})
        store.save(status)
        result.rollback = done
        text = (f"rolled back v{done.rolled_back} to v{done.restored} ({done.switched}"
                + (f", traffic in {done.traffic_s * 1e3:.0f} ms" if done.traffic_s else "") + ")")  # fmt: skip
        result.actions.append(text)
        say(text)
        tell(_notice(model, "rollback", decision.reason, rolled_back=done.rolled_back,
                     restored=done.restored, window=json.loads(record.model_dump_json())))  # fmt: skip
    elif decision.action is Action.ALERT:
        result.actions.append(f"alert: {decision.reason}")
        say(f"alert: {decision.reason}")
        tell(_notice(model, "alert", decision.reason))
    return status
