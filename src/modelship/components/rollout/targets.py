"""Where a rollout moves traffic: one factory for every target, as Flagger's router factory.

:func:`open_target` looks the policy's ``rollout.target`` up in :data:`TARGETS` and returns what
the controller drives (a router, a metric source, a prediction source) for the length of the
rollout. ``local`` starts both Bentos behind modelship's gateway on this machine (and, with
``rollout.load_rate``, traffic through it); ``seldon`` and ``kserve`` apply the platform's objects
and read the services' metrics from Prometheus.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from modelship.components.rollout.controller import MetricSource, PredictionSource
from modelship.components.serving.loadgen import Phase as LoadPhase
from modelship.components.serving.loadgen import run as drive
from modelship.components.serving.local import gateway_launch, log_root
from modelship.components.serving.packaged import bodies, champion_package
from modelship.components.serving.server import free_port, package_launch, served
from modelship.components.targets.cluster import CustomObjects, Deployable, load_api
from modelship.components.targets.kubernetes import deployable, manifests_for, router_for
from modelship.components.targets.local import GatewayRouter
from modelship.components.targets.prometheus import PrometheusMetrics, SeldonMetrics
from modelship.components.targets.seldon import model_name as seldon_model_name
from modelship.core.errors import InputError, StageError
from modelship.core.events import EventSink
from modelship.core.records import PackageRecord
from modelship.core.settings import GATEWAY_TOKEN_ENV
from modelship.core.tags import TAG_K8S_OBJECTS
from modelship.core.traffic import TrafficRouter, Weights
from modelship.policies.schema import Policy
from modelship.registry.client import ModelRef, Registry

STAGE = "rollout"


@dataclass(frozen=True)
class RolloutPlan:
    """A rollout of ``ref`` against ``champion``, as the rollout stage was given it."""

    ref: ModelRef
    champion: ModelRef
    policy: Policy
    registry: Registry
    #: the package step's output (the challenger's :class:`PackageRecord`)
    packaged: Path
    workdir: Path
    env: dict[str, str]
    home: Path
    events: EventSink


@dataclass
class TargetPorts:
    """What the controller drives on a target, while the target is open."""

    router: TrafficRouter
    metrics: MetricSource
    predictions: PredictionSource
    #: what the rollout's record keeps of the target at the end (the gateway's state)
    final: Callable[[], dict[str, Any]] = field(default=dict)
    #: seconds for in-flight requests on the old champion to finish after a promotion
    drain_s: float = 0.0


class InferenceLogs:
    """Each version's logged predictions, read from the production inference log."""

    def __init__(self, root: str, model: str) -> None:
        self.root = root.rstrip("/")
        self.model = model

    def predictions(self, version: str, since: float) -> pd.DataFrame | None:
        from modelship.bentos.inference_log import read

        table = read(f"{self.root}/{self.model}/v{version}", after_us=int(since * 1e6))
        if table.num_rows == 0:
            return pd.DataFrame({"prediction": []})
        frame = table.select(["timestamp", "prediction"]).to_pandas()
        stamps = frame["timestamp"].astype("int64") / 1e6
        return frame.loc[stamps >= since, ["prediction"]].reset_index(drop=True)


class SeldonAnswers:
    """Each version's answers as Seldon recorded them in Kafka (its Model's outputs topic)."""

    def __init__(self, bootstrap: str, prefix: str, namespace: str, models: dict[str, str]) -> None:
        self.bootstrap, self.prefix, self.namespace = bootstrap, prefix, namespace
        #: model version -> the Seldon Model's name
        self.models = models

    def predictions(self, version: str, since: float) -> pd.DataFrame | None:
        from modelship.components.serving.seldon_kafka import answers

        found = answers(self.bootstrap, self.prefix, self.namespace, self.models[version],
                        after_us=int(since * 1e6))  # fmt: skip
        return found[["prediction"]].reset_index(drop=True)


class NoLogs:
    def predictions(self, version: str, since: float) -> pd.DataFrame | None:
        return None


@contextlib.contextmanager
def local_target(plan: RolloutPlan) -> Iterator[TargetPorts]:
    """Both Bentos and ``python -m modelship.gateway`` on this machine, stopped at the end."""
    ref, rollout = plan.ref, plan.policy.rollout
    old, why_not = champion_package(plan.registry, ref)
    if old is None:
        raise StageError(
            f"cannot run a canary against the champion: {why_not}",
            hint=f"deploy the champion again (modelship deploy {ref.name} --version "
            f"{plan.champion.version}) so it has a Bento, or move the champion alias by hand",
        )
    record = PackageRecord.load(plan.packaged)
    # production traffic: the servers write the production inference log
    env = {k: v for k, v in plan.env.items() if k != "MODELSHIP_INFERENCE_LOG"}
    logs = log_root(plan.policy, os.environ | env, plan.home)
    env["MODELSHIP_INFERENCE_LOG"] = logs
    token = plan.env.get(GATEWAY_TOKEN_ENV) or secrets.token_urlsafe(24)
    with contextlib.ExitStack() as stack:
        servers = {}
        for variant, what in (("champion", old), ("challenger", record.packaged)):
            plan.events.emit(STAGE, "step", step=f"starting the {variant} v{what.version}")
            port = free_port()
            servers[variant] = stack.enter_context(
                served(package_launch(what, port, env, None), port,
                       plan.workdir / f"{variant}.log", rollout.timeout_ready_s)
            )  # fmt: skip
        port = free_port()
        sticky = rollout.sticky_header if rollout.sticky else None
        backends = {"champion": (servers["champion"].url, old.version),
                    "challenger": (servers["challenger"].url, ref.version)}  # fmt: skip
        gateway = stack.enter_context(
            served(gateway_launch(port, token, backends, sticky, env), port,
                   plan.workdir / "gateway.log", 30.0)
        )  # fmt: skip
        router = GatewayRouter(gateway.url, token)
        if rollout.load_rate:
            done = threading.Event()
            driver = threading.Thread(
                target=drive,
                args=(f"{gateway.url}/predict", bodies(plan.policy, ref, record.columns),
                      [LoadPhase(rollout.load_rate, 24 * 3600)]),
                kwargs={"alive": lambda: "rollout over" if done.is_set() else None,
                        "connections": 64},
                daemon=True,
                name="rollout-traffic",
            )  # fmt: skip
            driver.start()
            stack.callback(driver.join, 5)
            stack.callback(done.set)
        logged = plan.policy.package.inference_log.enabled
        yield TargetPorts(
            router, router, InferenceLogs(logs, ref.name) if logged else NoLogs(),
            final=lambda: router.snapshot(), drain_s=rollout.drain_s,
        )  # fmt: skip


def cluster_ports(
    policy: Policy, champion: Deployable, challenger: Deployable, api: CustomObjects
) -> TargetPorts:
    """Seldon Core v2 or KServe: the objects applied at weight 0, metrics from Prometheus,
    predictions from the inference log where it is shared storage."""
    rollout = policy.rollout
    k8s = rollout.kubernetes
    router = router_for(rollout.target, api, k8s.namespace, champion, challenger)
    router.apply(router.manifests(Weights(0)))
    versions = {"champion": champion.version, "challenger": challenger.version}
    metrics: PrometheusMetrics
    if rollout.target == "seldon":  # Triton and MLServer serve there: Seldon's own series
        models = {"champion": seldon_model_name(champion),
                  "challenger": seldon_model_name(challenger)}  # fmt: skip
        metrics = SeldonMetrics(k8s.prometheus_url, models, versions, k8s.selector)
    else:  # KServe runs the Bento image, which counts its requests itself
        metrics = PrometheusMetrics(k8s.prometheus_url, versions, k8s.selector)
    uri = policy.package.inference_log.uri
    # pods write their logs where the cluster can reach; a local folder is not that
    shared = bool(uri) and "://" in str(uri) and not str(uri).startswith("file://")
    predictions: PredictionSource = InferenceLogs(str(uri), champion.model) if shared else NoLogs()
    if rollout.target == "seldon":  # Triton answers there, not the Bento: Seldon's own record
        predictions = NoLogs()
        if k8s.kafka_bootstrap:
            predictions = SeldonAnswers(k8s.kafka_bootstrap, k8s.kafka_topic_prefix,
                                        k8s.namespace, {v.version: seldon_model_name(v)
                                                        for v in (champion, challenger)})  # fmt: skip
    return TargetPorts(router, metrics, predictions)


@contextlib.contextmanager
def cluster_target(plan: RolloutPlan) -> Iterator[TargetPorts]:
    registry, k8s = plan.registry, plan.policy.rollout.kubernetes
    champion, challenger = (
        deployable(registry, plan.champion, k8s),
        deployable(registry, plan.ref, k8s),
    )
    ports = cluster_ports(plan.policy, champion, challenger, load_api())
    # a person finds the candidate's objects on its version, as the first version's are
    applied = manifests_for(plan.policy.rollout.target, champion, challenger, Weights(0),
                            k8s.namespace)  # fmt: skip
    registry.set_tag(plan.ref, TAG_K8S_OBJECTS, ", ".join(
        f"{m['kind']}/{k8s.namespace}/{m['metadata']['name']}" for m in applied))  # fmt: skip
    yield ports


#: every target a rollout can move traffic on, by the name ``rollout.target`` gives
TARGETS: dict[str, Callable[[RolloutPlan], AbstractContextManager[TargetPorts]]] = {
    "local": local_target,
    "seldon": cluster_target,
    "kserve": cluster_target,
}


def open_target(plan: RolloutPlan) -> AbstractContextManager[TargetPorts]:
    target = plan.policy.rollout.target
    if target not in TARGETS:
        raise InputError(
            f"unknown rollout target {target!r}",
            hint=f"set rollout.target to one of {', '.join(TARGETS)}",
        )
    return TARGETS[target](plan)
