"""Monitor passes over a model's champion: once (a KFP run, ``modelship monitor --once``) or on a
loop (``--watch``), acting through the live gateway of ``modelship serve`` where one runs."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

from modelship.components.monitor.notify import SECRET_ENV
from modelship.components.monitor.rollback import cluster_switch
from modelship.components.monitor.stage import PassResult, run_pass
from modelship.components.monitor.state import monitor_store
from modelship.components.serving.local import live_router, log_root
from modelship.core.settings import Settings
from modelship.policies.loader import load_policy
from modelship.registry.client import Registry


def monitor_once(
    settings: Settings,
    model: str,
    policy_file: Path | None = None,
    *,
    policy_text: str | None = None,
    log_reports: bool = True,
    say: Callable[[str], None] = print,
) -> PassResult:
    policy = load_policy(model, policy_file, policy_dir=settings.policies, text=policy_text).policy
    registry = Registry()
    cluster = cluster_switch(policy, registry)
    live = None if cluster is not None else live_router(settings.home, model)
    if live is None and cluster is None:
        say(f"no `modelship serve {model}` running here: a rollback would move the aliases only")
    return run_pass(
        model,
        policy,
        registry=registry,
        home=settings.home,
        bentoml_home=settings.bentoml_home,
        log_root=log_root(policy, dict(os.environ), settings.home),
        router=live[1] if live else None,
        secret=os.environ.get(SECRET_ENV, ""),
        log_reports=log_reports,
        say=say,
        store=monitor_store(settings, model),
        cluster=cluster,
    )


def watch(settings: Settings, model: str, policy_file: Path | None, interval_s: float,
          log_reports: bool, say: Callable[[str], None]) -> None:  # fmt: skip
    while True:
        result = monitor_once(settings, model, policy_file, log_reports=log_reports, say=say)
        if result.waiting_rows:
            say(f"{result.waiting_rows} rows wait for the next whole window")
        time.sleep(interval_s)
