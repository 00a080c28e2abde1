"""``modelship watch``: the registry watcher's loop, deploying each event in its own process."""

from __future__ import annotations

import subprocess
import sys
import time

from mlflow import MlflowClient

from modelship.core.errors import InputError
from modelship.core.identifiers import check_model_name, check_version
from modelship.core.lifeline import tied
from modelship.core.settings import Settings
from modelship.live import make_console
from modelship.registry.watcher import CursorFile, RegistryEvent, poll_once

CURSOR = "watcher-cursor.json"


def deploy_command(event: RegistryEvent) -> list[str]:
    return [
        sys.executable,
        "-m",
        "modelship.cli",
        "deploy",
        event.model,
        "--version",
        event.version,
        "--json",
    ]


def watch_registry(
    settings: Settings, models: list[str] | None, *, interval: float, once: bool
) -> None:
    console = make_console()
    cursor = CursorFile(settings.home / CURSOR)
    client = MlflowClient(settings.tracking_uri, settings.registry_uri)

    def handle(event: RegistryEvent) -> None:
        try:  # names from the registry become a process' arguments: checked first
            check_model_name(event.model)
            check_version(event.version)
        except InputError as e:
            console.print(f"{event.kind}: skipped, {e.message}")
            return
        console.print(f"{event.kind}: {event.model} v{event.version} → deploying")
        # its own process: a crashing deployment cannot take the watcher down
        proc = subprocess.run(
            tied(deploy_command(event)), capture_output=True, text=True, env=settings.child_env()
        )
        outcome = {0: "passed", 3: "rejected"}.get(
            proc.returncode, f"error (exit {proc.returncode})"
        )
        console.print(f"  {event.model} v{event.version}: {outcome}")
        if proc.returncode not in (0, 3):
            console.print(
                f"  [dim]{proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ''}[/]"
            )

    first = cursor.load() is None
    while True:
        events = poll_once(client, cursor, handle, models)
        if first:
            console.print(
                f"watching {settings.tracking_uri}: existing versions recorded, new ones will deploy"
            )
            first = False
        if once:
            if not events:
                console.print("no new versions or alias moves")
            return
        time.sleep(interval)
