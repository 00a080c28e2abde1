"""The CLI's view of a running deployment: one line per stage, refreshed from step events."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

#: stages in pipeline order; later issues add theirs here and in pipelines/deploy.py
STAGES = ["resolve", "validate", "optimize", "package", "loadtest", "rollout", "conclude"]

_ICON = {
    "waiting": "·",
    "running": "…",
    "passed": "✔",
    "failed": "✘",
    "error": "!",
    "skipped": "–",
}
_STYLE = {
    "waiting": "dim",
    "running": "cyan",
    "passed": "green",
    "failed": "red",
    "error": "red bold",
    "skipped": "dim",
}


@dataclass
class StageView:
    name: str
    status: str = "waiting"
    started: float | None = None
    duration_s: float | None = None
    detail: str = ""


@dataclass
class DeployView:
    title: str
    stages: dict[str, StageView] = field(default_factory=lambda: {s: StageView(s) for s in STAGES})

    def apply(self, event: dict[str, Any]) -> None:
        view = self.stages.setdefault(event["stage"], StageView(event["stage"]))
        status = event["status"]
        if status == "start":
            view.status, view.started = "running", float(event["t"])
        elif status == "step":
            view.detail = str(event.get("step", ""))
        elif status == "end":
            view.status = "passed" if event.get("passed", True) else "failed"
            if event.get("skipped"):
                view.status = "skipped"
            view.duration_s = float(event.get("duration_s", 0.0))
            view.detail = str(event.get("reason", ""))
        elif status == "error":
            view.status = "error"
            view.duration_s = float(event.get("duration_s", 0.0))
            view.detail = str(event.get("message", ""))

    def render(self) -> Table:
        table = Table(
            title=self.title, title_justify="left", show_header=False, box=None, pad_edge=False
        )
        table.add_column(width=2)
        table.add_column(min_width=10)
        table.add_column(justify="right", min_width=7)
        table.add_column(overflow="fold", max_width=90)
        now = time.time()
        for view in self.stages.values():
            if view.duration_s is not None:
                took = f"{view.duration_s:.1f}s"
            elif view.started is not None:
                took = f"{now - view.started:.1f}s"
            else:
                took = ""
            style = _STYLE[view.status]
            table.add_row(
                Text(_ICON[view.status], style=style),
                Text(view.name, style=style),
                took,
                Text(_shorten(view.detail), style="dim" if view.status == "running" else ""),
            )
        return table


def _shorten(text: str, limit: int = 160) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


#: checks shown even when they pass: the figures a person deploys for
_HEADLINE = ("metric.", "optimize.")


def render_checks(summary: dict[str, Any], *, verbose: bool = False) -> Group:
    """Each stage's checks: failures in full, passes counted unless ``verbose``."""
    parts: list[Any] = []
    for stage in summary.get("stages", []):
        if stage.get("skipped"):
            parts.append(Text(f"{stage['name']}: {stage['reason']}", style="dim"))
            continue
        table = Table(title=f"{stage['name']} checks", title_justify="left", box=None)
        table.add_column("check", no_wrap=True)
        table.add_column("measured", justify="right")
        table.add_column("threshold")
        table.add_column("reason", overflow="fold", max_width=70)
        shown = 0
        for check in stage["checks"]:
            headline = check["name"].startswith(_HEADLINE)
            if check["passed"] and not verbose and not headline:
                continue
            shown += 1
            mark = "[green]✔[/]" if check["passed"] else "[red]✘[/]"
            if not check["passed"] and not check.get("blocking", True):
                mark = "[yellow]![/]"  # dropped (a variant), not a rejection
            if check.get("skipped"):
                mark = "[dim]–[/]"
            table.add_row(
                f"{mark} {check['name']}",
                "" if check["measured"] is None else str(check["measured"]),
                "" if check["threshold"] is None else str(check["threshold"]),
                check["reason"],
            )
        hidden = len(stage["checks"]) - shown
        if hidden:
            table.caption = f"{hidden} more checks passed (--verbose shows them)"
        parts.append(table)
    return Group(*parts)


def outcome_line(summary: dict[str, Any]) -> Text:
    ref = f"{summary['model']} v{summary['version']}"
    if summary["outcome"] == "passed":
        return Text(f"{ref} passed every gate ({summary['digest'][:19]}…)", style="bold green")
    return Text(
        f"{ref} rejected at {summary['rejected_at']}: {summary['reason']}", style="bold red"
    )


def make_console() -> Console:
    # stderr: stdout belongs to --json output and, while a pipeline runs, to KFP's log capture
    return Console(stderr=True, highlight=False)
