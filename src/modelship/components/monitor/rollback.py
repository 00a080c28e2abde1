"""Rollback: traffic to the previous champion first (the gateway, or the cluster), then the registry.

The previous champion must be warm behind the gateway (``modelship serve`` keeps it there), so
the switch is two calls and no server start. On a cluster target (``rollout.target`` seldon or
kserve) the cluster's objects are switched instead (:func:`cluster_switch`). With neither, only
the registry moves (servers started from then on serve the previous champion). Anything
that stops a rollback half way raises :class:`RollbackFailed` saying what was done and what a
person must finish: never a silent half-state.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass

from mlflow.exceptions import MlflowException

from modelship.components.targets.cluster import CustomObjects, load_api
from modelship.components.targets.kubernetes import deployable, serve_alone
from modelship.components.targets.local import GatewayRouter
from modelship.core.errors import ModelshipError, RollbackFailed
from modelship.core.tags import TAG_K8S_OBJECTS, TAG_REPORT
from modelship.core.traffic import Weights
from modelship.core.verdict import ModelState
from modelship.policies.schema import Policy
from modelship.registry.audit import actor
from modelship.registry.client import CHAMPION, PREVIOUS, ModelRef, Registry

#: moves a cluster's traffic to the version it is given; what it applied, for the record
ClusterSwitch = Callable[[ModelRef], list[str]]


def cluster_switch(
    policy: Policy, registry: Registry, api: Callable[[], CustomObjects] = load_api
) -> ClusterSwitch | None:
    """The cluster's switch for ``policy``'s target; None for the local gateway."""
    if policy.rollout.target == "local":
        return None

    def switch(previous: ModelRef) -> list[str]:
        return serve_alone(policy, deployable(registry, previous, policy.rollout.kubernetes), api())

    return switch


@dataclass(frozen=True)
class RollbackDone:
    rolled_back: str
    restored: str
    #: "gateway" when live traffic moved, "registry" when only the aliases did
    switched: str
    #: from the start of the rollback to all traffic on the previous champion
    traffic_s: float | None


def previous_of(registry: Registry, model: str) -> ModelRef | None:
    try:
        return registry.resolve(model, alias=PREVIOUS)
    except ModelshipError:
        return None


class RegistryBehind(RollbackFailed):
    """Traffic is on the previous champion, but the registry's aliases were not moved."""


def switch_traffic(router: GatewayRouter, previous: ModelRef) -> None:
    state = router.describe()
    serving = state["backends"].get("champion") or {}
    if serving.get("version") == previous.version and "challenger" not in state["backends"]:
        return  # switched already: a pass killed after the switch is being finished
    standby = state["backends"].get("challenger")
    if standby is None or standby.get("version") != previous.version:
        raise RollbackFailed(
            f"v{previous.version} is not warm behind the gateway at {router.url}: nothing was "
            "changed",
            hint="restart `modelship serve MODEL` (it keeps the previous champion warm), or "
            "move the champion alias by hand",
        )
    if not standby.get("healthy"):
        raise RollbackFailed(
            f"v{previous.version}'s server behind the gateway fails its health checks: nothing "
            "was changed",
            hint="see the server's log under $MODELSHIP_HOME/serving/logs; restart "
            "`modelship serve MODEL`",
        )
    router.set_weights(Weights(100))
    router.promote()


def rollback(
    registry: Registry,
    current: ModelRef,
    reason: str,
    router: GatewayRouter | None,
    report: str | None = None,
    cluster: ClusterSwitch | None = None,
) -> RollbackDone:
    previous = previous_of(registry, current.name)
    if previous is None:
        raise RollbackFailed(f"{current.name} has no previous champion to roll back to",
                             hint="deploy a known-good version, or alert only "
                             "(monitor.action: alert)")  # fmt: skip
    started = time.perf_counter()
    traffic_s = None
    objects: list[str] = []
    if router is not None:
        try:
            switch_traffic(router, previous)
        except ModelshipError as e:
            if isinstance(e, RollbackFailed):
                raise
            raise RollbackFailed(f"the gateway did not take the switch: {e}",
                                 hint="check the gateway; nothing in the registry was changed") from e  # fmt: skip
        traffic_s = time.perf_counter() - started
    elif cluster is not None:
        try:
            objects = cluster(previous)
        except ModelshipError as e:
            raise RollbackFailed(
                f"the cluster did not take the switch to v{previous.version}: {e.message}",
                hint="nothing in the registry was changed; fix the cluster access and run the "
                "monitor again, or roll back by hand",
            ) from e
        traffic_s = time.perf_counter() - started
    try:
        # the restored version serves again from now: the monitor reads its log from here on
        # (not in record_rollback, which a later pass may run a second time)
        registry.mark_live(previous)
        record_rollback(registry, current, previous, reason, report=report, objects=objects,
                        where="cluster" if objects else "gateway" if router else "aliases")  # fmt: skip
    except Exception as e:
        done = "traffic is on" if router is not None or cluster is not None else "nothing moved to"
        raise RegistryBehind(
            f"{done} v{previous.version}, but the registry could not be updated: {e}",
            hint=f"set the alias by hand: champion -> v{previous.version} of {current.name}, or "
            "run the monitor again (its next pass finishes the rollback)",
        ) from e
    switched = "gateway" if router is not None else "cluster" if cluster is not None else "registry"
    return RollbackDone(current.version, previous.version, switched, traffic_s)


def record_rollback(
    registry: Registry, current: ModelRef, previous: ModelRef, reason: str, *,
    report: str | None = None, objects: list[str] | None = None, where: str = "aliases",
) -> None:  # fmt: skip
    """The registry's half of a rollback, after the traffic moved: safe to run twice (a pass
    killed half way through it is finished by the next)."""
    if objects:
        registry.set_tag(previous, TAG_K8S_OBJECTS, ", ".join(objects))
    registry.client.set_registered_model_alias(current.name, CHAMPION, previous.version)
    with contextlib.suppress(MlflowException):  # gone already where this runs a second time
        registry.client.delete_registered_model_alias(current.name, PREVIOUS)
    registry.audit(current.name, "rolled back", previous.version, by=f"drift monitor ({actor()})",
                   rolled_back=current.version, reason=reason, where=where)  # fmt: skip
    registry.set_state(current, ModelState.ROLLED_BACK, reason)
    if report:
        registry.set_tag(current, TAG_REPORT, report)
    registry.set_state(previous, ModelState.PROMOTED,
                       f"champion again: v{current.version} was rolled back")  # fmt: skip
