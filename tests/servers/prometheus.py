"""A real Prometheus (Debian's ``prometheus`` 2.42) scraping given targets every 3 s.

Runs as a plain process with its own config and data folder on a free loopback port; the
analysis' PromQL then runs on the real query engine, against series scraped from real
``/metrics`` endpoints.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from modelship.core.ports import free_port
from tests.support import background, wait_http

AVAILABLE = shutil.which("prometheus") is not None


@contextlib.contextmanager
def prometheus(
    root: Path, targets: list[str], labels: dict[str, str] | None = None
) -> Iterator[str]:
    """Prometheus scraping ``targets`` (``host:port``) at ``/metrics``; its URL."""
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = root / "prometheus.yml"
    config.write_text(json.dumps({  # YAML is a superset of JSON
        # a scrape may take that long on a loaded 2-core machine: BentoML's /metrics gathers
        # its workers' series (with 1 s, every scrape of the Bento timed out in a CI run)
        "global": {"scrape_interval": "3s", "scrape_timeout": "3s", "evaluation_interval": "3s"},
        "scrape_configs": [{"job_name": "served", "static_configs": [
            {"targets": targets, "labels": labels or {}}]}],
    }))  # fmt: skip
    cmd = ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={root / 'data'}",
           f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"]  # fmt: skip
    with background(cmd, root / "prometheus.log") as proc:
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/-/ready", proc, root / "prometheus.log", timeout=60)
        yield url


def wait_for(url: str, promql: str, check: object, timeout_s: float = 90.0) -> list[dict]:  # type: ignore[type-arg]
    """Query until ``check(result)`` holds (a scrape lands every 3 s); the last result."""
    deadline = time.monotonic() + timeout_s
    result: list[dict] = []  # type: ignore[type-arg]
    while time.monotonic() < deadline:
        query = urllib.parse.urlencode({"query": promql})
        with urllib.request.urlopen(f"{url}/api/v1/query?{query}", timeout=5) as answer:
            result = json.loads(answer.read())["data"]["result"]
        if callable(check) and check(result):
            return result
        time.sleep(0.5)
    with urllib.request.urlopen(f"{url}/api/v1/targets", timeout=5) as answer:
        targets = json.loads(answer.read())["data"]["activeTargets"]
    health = [
        (t["scrapeUrl"], t["health"], t["lastError"], t["lastScrapeDuration"]) for t in targets
    ]
    raise AssertionError(f"{promql} never satisfied the check: {result}; targets: {health}")
