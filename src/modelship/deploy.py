"""``modelship deploy``: run the deploy pipeline locally and follow its progress."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from modelship.core.events import follow
from modelship.core.settings import Settings
from modelship.pipelines.local import LocalRun, run_deploy
from modelship.policies.loader import load_policy, policy_yaml

EventHandler = Callable[[dict[str, Any]], None]


def deploy(
    settings: Settings,
    model: str,
    *,
    version: str | None = None,
    alias: str | None = None,
    policy_file: Path | None = None,
    on_event: EventHandler | None = None,
    poll_s: float = 0.1,
) -> dict[str, Any]:
    """Deploy one model version through every gate; the summary, or the error that stopped it.

    The pipeline runs in a worker thread; this thread relays its step events to ``on_event``.
    """
    # fail on a bad policy before any process starts; the steps get the policy itself
    loaded = load_policy(model, policy_file, policy_dir=settings.policies)
    local_run = LocalRun.new(settings, model)
    outcome: dict[str, Any] = {}

    def work() -> None:
        try:
            outcome["summary"] = run_deploy(
                settings,
                local_run,
                model=model,
                version=version,
                alias=alias,
                policy_yaml=policy_yaml(loaded.policy),
            )
        except BaseException as e:  # handed to the calling thread, raised there
            outcome["error"] = e

    worker = threading.Thread(target=work, name="modelship-pipeline", daemon=True)
    worker.start()
    offset = 0
    while True:
        alive = worker.is_alive()
        events, offset = follow(local_run.events, offset)
        for event in events:
            if on_event is not None:
                on_event(event)
        if not alive:
            break
        worker.join(poll_s)
    if "error" in outcome:
        raise outcome["error"]
    summary: dict[str, Any] = outcome["summary"]
    summary["log"] = str(local_run.log)
    return summary


def deploy_with_view(
    settings: Settings,
    model: str,
    *,
    version: str | None = None,
    alias: str | None = None,
    policy_file: Path | None = None,
    verbose: bool = False,
) -> dict[str, Any]:
    """:func:`deploy` with the live stage view, the checks and the outcome on the terminal."""
    from rich.live import Live

    from modelship.live import DeployView, make_console, outcome_line, render_checks

    console = make_console()
    what = f"v{version}" if version else f"@{alias}" if alias else "latest version"
    view = DeployView(f"deploy {model} {what}")
    with Live(view.render(), console=console, refresh_per_second=8) as live:

        def show(event: dict[str, Any]) -> None:
            view.apply(event)
            live.update(view.render())

        summary = deploy(
            settings, model, version=version, alias=alias, policy_file=policy_file, on_event=show
        )
    console.print()
    console.print(render_checks(summary, verbose=verbose))
    console.print(outcome_line(summary))
    console.print(f"[dim]MLflow run {summary['run_id']} · log {summary['log']}[/]")
    return summary
