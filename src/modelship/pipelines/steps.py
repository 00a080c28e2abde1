"""What each KFP component runs: unpack KFP's plain values, build the stage's inputs, call it.

Each step is the entry point of its own process, so this is where settings are read (once).
"""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Callable
from pathlib import Path
from typing import Any

from modelship.components import conclude, resolve
from modelship.components.runtime import run_step
from modelship.components.validate import stage as validate_stage
from modelship.core.errors import ModelshipError
from modelship.core.events import EventSink
from modelship.core.settings import Settings
from modelship.core.verdict import Verdict
from modelship.policies.schema import Policy
from modelship.registry.client import Registry
from modelship.registry.deployments import DeploymentRun

ResolveOutputs = namedtuple("ResolveOutputs", ["version", "digest", "run_id", "policy"])


def _setup() -> tuple[Settings, Registry]:
    settings = Settings.from_env()
    settings.prepare()
    return settings, Registry()


def _gate(
    stage: str, body: Callable[[EventSink], Verdict], deployment: DeploymentRun, verdict_path: str
) -> bool:
    """Run a gate's stage; save its verdict for the next step, or close the run on an error."""
    try:
        verdict = run_step(stage, body)
    except ModelshipError as e:
        deployment.fail(str(e))
        raise
    verdict.save(verdict_path)
    return verdict.passed


def resolve_step(
    model_name: str, version: str, alias: str, policy_file: str, model_path: str
) -> Any:
    settings, registry = _setup()

    def body(events: EventSink) -> Any:
        r = resolve.run(
            model_name,
            version or None,
            alias or None,
            Path(policy_file) if policy_file else None,
            settings=settings,
            registry=registry,
            dest=Path(model_path),
            events=events,
        )
        return ResolveOutputs(r.ref.version, r.digest, r.run_id, r.policy_json)

    return run_step("resolve", body)


def validate_step(
    model_path: str,
    model_name: str,
    version: str,
    digest: str,
    run_id: str,
    policy: str,
    verdict_path: str,
) -> bool:
    settings, registry = _setup()
    deployment = DeploymentRun(registry.client, run_id)

    def body(events: EventSink) -> Verdict:
        ref = registry.resolve(model_name, version=version)
        workdir = Path(verdict_path).parent / "validate-work"
        return validate_stage.run(
            ref,
            Path(model_path),
            digest,
            Policy.model_validate_json(policy).validate_stage,
            registry=registry,
            deployment=deployment,
            workdir=workdir,
            env=settings.child_env(),
            events=events,
        )

    return _gate("validate", body, deployment, verdict_path)


def optimize_step(
    model_path: str,
    model_name: str,
    version: str,
    digest: str,
    run_id: str,
    policy: str,
    validate_verdict_path: str,
    verdict_path: str,
    optimized_path: str,
) -> bool:
    from modelship.components.optimize import stage as optimize_stage

    _, registry = _setup()
    deployment = DeploymentRun(registry.client, run_id)

    def body(events: EventSink) -> Verdict:
        ref = registry.resolve(model_name, version=version)
        return optimize_stage.run(
            ref,
            Path(model_path),
            digest,
            Policy.model_validate_json(policy),
            Verdict.load(validate_verdict_path),
            registry=registry,
            deployment=deployment,
            workdir=Path(verdict_path).parent / "optimize-work",
            out_dir=Path(optimized_path),
            events=events,
        )

    return _gate("optimize", body, deployment, verdict_path)


def package_step(
    model_path: str,
    model_name: str,
    version: str,
    digest: str,
    run_id: str,
    policy: str,
    optimize_verdict_path: str,
    optimized_path: str,
    verdict_path: str,
    packaged_path: str,
) -> bool:
    from modelship.components.package import stage as package_stage

    settings, registry = _setup()
    deployment = DeploymentRun(registry.client, run_id)

    def body(events: EventSink) -> Verdict:
        ref = registry.resolve(model_name, version=version)
        return package_stage.run(
            ref,
            Path(model_path),
            digest,
            Policy.model_validate_json(policy),
            Verdict.load(optimize_verdict_path),
            Path(optimized_path),
            registry=registry,
            deployment=deployment,
            workdir=Path(verdict_path).parent / "package-work",
            out_dir=Path(packaged_path),
            bentoml_home=settings.bentoml_home,
            events=events,
        )

    return _gate("package", body, deployment, verdict_path)


def loadtest_step(
    model_name: str,
    version: str,
    run_id: str,
    policy: str,
    package_verdict_path: str,
    packaged_path: str,
    verdict_path: str,
) -> bool:
    from modelship.components.loadtest import stage as loadtest_stage

    settings, registry = _setup()
    deployment = DeploymentRun(registry.client, run_id)

    def body(events: EventSink) -> Verdict:
        ref = registry.resolve(model_name, version=version)
        return loadtest_stage.run(
            ref,
            Policy.model_validate_json(policy),
            Verdict.load(package_verdict_path),
            Path(packaged_path),
            registry=registry,
            deployment=deployment,
            workdir=Path(verdict_path).parent / "loadtest-work",
            env=settings.child_env(),
            events=events,
        )

    return _gate("loadtest", body, deployment, verdict_path)


def rollout_step(
    model_name: str,
    version: str,
    run_id: str,
    policy: str,
    loadtest_verdict_path: str,
    packaged_path: str,
    verdict_path: str,
) -> bool:
    from modelship.components.rollout import stage as rollout_stage

    settings, registry = _setup()
    deployment = DeploymentRun(registry.client, run_id)

    def body(events: EventSink) -> Verdict:
        ref = registry.resolve(model_name, version=version)
        return rollout_stage.run(
            ref,
            Policy.model_validate_json(policy),
            Verdict.load(loadtest_verdict_path),
            Path(packaged_path),
            registry=registry,
            deployment=deployment,
            workdir=Path(verdict_path).parent / "rollout-work",
            env=settings.child_env(),
            home=settings.home,
            events=events,
        )

    return _gate("rollout", body, deployment, verdict_path)


def conclude_step(
    model_name: str,
    version: str,
    digest: str,
    run_id: str,
    verdict_paths: list[str],
    summary_path: str,
) -> str:
    import json

    _, registry = _setup()

    def body(events: EventSink) -> dict[str, Any]:
        ref = registry.resolve(model_name, version=version)
        verdicts = [Verdict.load(p) for p in verdict_paths]
        return conclude.run(ref, digest, DeploymentRun(registry.client, run_id), verdicts)

    summary = run_step("conclude", body)
    Path(summary_path).write_text(json.dumps(summary, indent=2))
    return str(summary["outcome"])


def monitor_step(model_name: str, policy_file: str, report_path: str) -> str:
    """One monitor pass; the windows and actions as JSON; the last window's outcome."""
    import json

    from modelship.components.monitor.passes import monitor_once

    settings, _ = _setup()

    def body(events: EventSink) -> Any:
        def say(message: str) -> None:
            events.emit("monitor", "step", step=message)
            print(message, flush=True)

        return monitor_once(
            settings, model_name, Path(policy_file) if policy_file else None, say=say
        )

    result = run_step("monitor", body)
    windows = [json.loads(w.model_dump_json()) for w in result.windows]
    Path(report_path).write_text(json.dumps({"windows": windows, "actions": result.actions,
                                             "waiting_rows": result.waiting_rows}, indent=2))  # fmt: skip
    return str(windows[-1]["outcome"]) if windows else "waiting"
