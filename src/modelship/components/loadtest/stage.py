"""The load-test gate: the packaged model under real open-loop load, against SLOs and the champion.

Demands a passing package verdict. Starts the candidate as production will (its image where the
package stage built one and buildah is here, else ``bentoml serve`` of its Bento), drives the
policy's load (constant, stepped, or find-max), stops it, then does the same for the champion's
Bento under the same load in the same run. Load-test traffic goes to its own inference log, never
the production one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from modelship.components.contract import PackagedInputs, Stage, StageContext
from modelship.components.loadtest import gate, report
from modelship.components.serving.loadgen import LoadResult, Phase, Progress
from modelship.components.serving.loadgen import run as drive
from modelship.components.serving.packaged import bodies, champion_package
from modelship.components.serving.server import (
    Launch,
    NotReady,
    package_launch,
    pick_port,
    served,
)
from modelship.core.events import EventSink
from modelship.core.records import PackagedModel, PackageRecord
from modelship.core.verdict import Check, ModelState, Verdict
from modelship.policies.schema import LoadTest
from modelship.registry.client import ModelRef

NAME = "loadtest"


def phases(lt: LoadTest) -> list[Phase]:
    if lt.mode == "stepped":
        return [Phase(s.rate, s.duration_s) for s in lt.steps]
    return [Phase(lt.rate, lt.duration_s)]


def _bar(p: Progress) -> str:
    share = min(1.0, p.elapsed_s / p.total_s) if p.total_s else 1.0
    filled = int(share * 20)
    what = "warm-up" if p.warming_up else f"p99 {p.p99_ms:.1f} ms"
    return f"[{'#' * filled}{'.' * (20 - filled)}] {share:.0%} · {p.sent} recorded · {what} · {p.errors} errors"


def _launch(packaged: PackagedModel, port: int, env: dict[str, str], lt: LoadTest) -> Launch:
    return package_launch(packaged, port, env, lt.server_cpus or None)


def _measure(
    launch: Launch, port: int, body: list[bytes], lt: LoadTest, log: Path, label: str,
    events: EventSink,
) -> tuple[list[Check], LoadResult | None, list[dict[str, Any]]]:  # fmt: skip
    """Checks, the main result (None in find-max mode) and find-max probes for one server."""
    checks: list[Check] = []
    try:
        with served(launch, port, log, lt.timeout_ready_s) as server:
            checks.append(Check(name=f"loadtest.{label}.ready", kind="loadtest", passed=True,
                                measured=round(server.ready_s, 2),
                                reason=f"{launch.what} ready in {server.ready_s:.1f} s"))  # fmt: skip

            def progress(p: Progress) -> None:
                events.emit(NAME, "step", step=f"{label}: {_bar(p)}")

            if lt.mode == "find_max":
                return checks, None, _find_max(server.url, body, lt, progress, server.exited)
            result = drive(
                f"{server.url}/predict", body, phases(lt), warmup_s=lt.warmup_s,
                connections=lt.connections, timeout_s=lt.request_timeout_s, progress=progress,
                alive=server.exited,
            )  # fmt: skip
            return checks, result, []
    except NotReady as e:
        checks.append(Check(name=f"loadtest.{label}.ready", kind="loadtest", passed=False,
                            reason=f"{launch.what}: {e.message}"))  # fmt: skip
        return checks, None, []


def _find_max(
    url: str, body: list[bytes], lt: LoadTest, progress: Any, alive: Any
) -> list[dict[str, Any]]:
    probes: list[dict[str, Any]] = []
    good: float | None = None
    bad: float | None = None
    bisections = 0
    rate = lt.rate
    while True:
        result = drive(f"{url}/predict", body, [Phase(rate, lt.find_max.probe_s)],
                       warmup_s=min(lt.warmup_s, 1.0), connections=lt.connections,
                       timeout_s=lt.request_timeout_s, progress=progress, alive=alive)  # fmt: skip
        figures = result.figures()
        figures["passed"] = gate.probe_passes(figures, lt)
        probes.append(figures)
        if figures["stopped"]:
            break
        if figures["passed"]:
            good = rate
        else:
            bad = rate
        if bad is not None:
            if bisections >= lt.find_max.bisections:
                break
            bisections += 1
        elif rate >= lt.find_max.limit_rate:
            break
        rate = gate.next_probe(good, bad, lt, lt.rate)
        if bad is not None and good is None and rate < 1:
            break
    return probes


def run(ctx: StageContext, inputs: PackagedInputs) -> Verdict:
    """Load-test ``ctx.ref``'s package (the package step's output)."""
    ref, registry, workdir, events, policy = (
        ctx.ref, ctx.registry, ctx.workdir, ctx.events, ctx.policy
    )  # fmt: skip
    lt = policy.loadtest
    if not lt.enabled:
        return Verdict.from_checks(NAME, [Check(name="loadtest", kind="loadtest", passed=True,
                                                 skipped=True, reason="loadtest.enabled is false")])  # fmt: skip
    record = PackageRecord.load(inputs.packaged)
    body = bodies(policy, ref, record.columns)
    # load-test traffic never reaches the production inference log
    env = {**ctx.env, "MODELSHIP_INFERENCE_LOG": str(workdir / "inference")}
    port = pick_port(lt.port)
    events.emit(NAME, "step", step=f"starting v{ref.version} ({lt.mode}, {lt.rate:g} req/s)")
    checks, result, probes = _measure(
        _launch(record.packaged, port, env, lt),
        port,
        body,
        lt,
        workdir / "candidate.log",
        "candidate",
        events,
    )
    runs: dict[str, LoadResult] = {}
    figures: dict[str, Any] = {"mode": lt.mode}
    if result is not None:
        runs[f"v{ref.version}"] = result
        figures["candidate"] = result.figures()
        checks += gate.slo_checks(figures["candidate"], lt)
        champion, why_not = champion_package(registry, ref)
        compared = None
        if champion is not None and all(c.passed for c in checks if c.blocking):
            events.emit(NAME, "step", step=f"the champion v{champion.version} under the same load")
            port = pick_port(lt.port)
            found, champ_result, _ = _measure(
                _launch(champion, port, env, lt), port, body, lt, workdir / "champion.log",
                "champion", events,
            )  # fmt: skip
            # what served the champion (its image by digest, or its Bento), on record; it
            # never blocks: the comparison below judges the champion's run
            checks += [c.model_copy(update={"blocking": False}) for c in found]
            if champ_result is not None and not champ_result.stopped:
                runs[f"champion v{champion.version}"] = champ_result
                compared = figures["champion"] = champ_result.figures()
            else:
                why_not = f"the champion's server did not run: {found[-1].reason}"
        elif champion is not None:
            why_not = "the candidate already failed the SLO"
        checks.append(gate.champion_check(figures["candidate"], compared, lt, why_not))
    elif probes:
        figures["probes"] = probes
        passing = [p["target_rate"] for p in probes if p["passed"]]
        best = max(passing, default=0.0)
        figures["max_rate"] = best
        checks.append(Check(
            name="loadtest.max_rate", kind="loadtest", passed=best >= lt.rate, measured=best,
            threshold=f">= {lt.rate:g} req/s",
            reason=f"highest arrival rate with p99 <= {lt.slo.p99_ms:g} ms: {best:g} req/s "
            f"({len(probes)} probes)",
        ))  # fmt: skip
    verdict = Verdict.from_checks(NAME, checks, figures=_flat(figures))
    files = _report(ref, figures, runs, probes, lt, workdir)
    if (deployment := ctx.deployment) is not None:
        for path in files:
            deployment.log_file(path, "loadtest")
    return verdict


def _flat(figures: dict[str, Any]) -> dict[str, float]:
    """The numbers MLflow keeps as metrics: candidate/champion percentiles, rates, max rate."""
    out: dict[str, float] = {}
    for who in ("candidate", "champion"):
        f = figures.get(who)
        if not f:
            continue
        out.update({f"{who}.{k}_ms": v for k, v in f["latency_ms"].items()})
        out.update(
            {f"{who}.achieved_rate": f["achieved_rate"], f"{who}.error_rate": f["error_rate"]}
        )
    if "max_rate" in figures:
        out["max_rate"] = figures["max_rate"]
    return out


def _report(
    ref: ModelRef, figures: dict[str, Any], runs: dict[str, LoadResult],
    probes: list[dict[str, Any]], lt: LoadTest, workdir: Path,
) -> list[Path]:  # fmt: skip
    files = [workdir / "loadtest.json"]
    files[0].write_text(json.dumps(figures, indent=2))
    images = []
    if runs:
        images.append(report.over_time(runs, lt.slo.p99_ms, workdir / "latency_over_time.png"))
        images.append(report.histogram(runs, workdir / "latency_histogram.png"))
    if probes:
        images.append(report.find_max_chart(probes, lt.slo.p99_ms, workdir / "find_max.png"))
    page = report.page(f"Load test of {ref}", figures, images, workdir / "loadtest.html")
    return [*files, *images, page]


STAGE: Stage[PackagedInputs] = Stage(NAME, ModelState.LOAD_TESTED, run)
