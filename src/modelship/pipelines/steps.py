"""What each KFP component runs: unpack KFP's plain values, build the stage's inputs, call it.

Each step is the entry point of its own process, so this is where settings are read (once).
Only what every step needs is imported here: a stage whose gate before it did not pass records
that it did not run without loading MLflow or its stage's libraries (:func:`_not_run`).
"""

from __future__ import annotations

from collections import namedtuple
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from modelship.components.runtime import run_step
from modelship.core.events import EventSink
from modelship.core.verdict import Verdict

if TYPE_CHECKING:
    from modelship.components.contract import Stage
    from modelship.core.settings import Settings
    from modelship.registry.client import Registry

I = TypeVar("I")  # noqa: E741  (a stage's inputs)

ResolveOutputs = namedtuple("ResolveOutputs", ["version", "digest", "run_id", "policy"])


def _setup() -> tuple[Settings, Registry]:
    from modelship.core.settings import Settings
    from modelship.registry.client import Registry

    settings = Settings.from_env()
    settings.prepare()
    return settings, Registry()


def _gate(
    stage: Stage[I],
    inputs: I,
    *,
    model_name: str,
    version: str,
    run_id: str,
    policy: str,
    verdict_path: str,
    previous_path: str | None = None,
) -> bool:
    """Run a gate's stage through the shared runner; save its verdict for the next step."""
    from modelship.components.contract import StageContext, run_stage
    from modelship.policies.schema import Policy
    from modelship.registry.deployments import DeploymentRun

    def body(events: EventSink) -> Verdict:
        settings, registry = _setup()
        deployment = DeploymentRun(registry.client, run_id)
        ctx = StageContext(
            ref=registry.resolve(model_name, version=version),
            policy=Policy.model_validate_json(policy),
            registry=registry,
            deployment=deployment,
            workdir=Path(verdict_path).parent / f"{stage.name}-work",
            settings=settings,
            events=events,
        )
        previous = Verdict.load(previous_path) if previous_path else None
        with deployment.beating():  # a step killed with its pod stops beating
            return run_stage(stage, ctx, inputs, previous)

    verdict = run_step(stage.name, body)
    verdict.save(verdict_path)
    return verdict.passed


def _not_run(stage: str, previous_path: str, verdict_path: str) -> bool | None:
    """False, with a ``not run`` verdict saved, when the gate before ``stage`` did not pass;
    None when it did. Checked before anything heavy is imported: on a cluster each such step is
    still a pod, and here a process, that only has to say it did not run."""
    previous = Verdict.load(previous_path)
    if previous.passed:
        return None
    verdict = run_step(stage, lambda _: Verdict.not_run(stage, previous))
    verdict.save(verdict_path)
    return False


def resolve_step(
    model_name: str, version: str, alias: str, policy_yaml: str, kfp_run: str, model_path: str
) -> Any:
    from modelship.components import resolve

    def body(events: EventSink) -> Any:
        settings, registry = _setup()
        r = resolve.run(
            model_name,
            version or None,
            alias or None,
            None,
            policy_text=policy_yaml or None,
            kfp_run=kfp_run,
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
    from modelship.components.contract import ModelInputs
    from modelship.components.validate import stage as validate_stage

    return _gate(
        validate_stage.STAGE, ModelInputs(Path(model_path), digest), model_name=model_name,
        version=version, run_id=run_id, policy=policy, verdict_path=verdict_path,
    )  # fmt: skip


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
    if (not_run := _not_run("optimize", validate_verdict_path, verdict_path)) is not None:
        return not_run
    from modelship.components.optimize import stage as optimize_stage

    inputs = optimize_stage.OptimizeInputs(Path(model_path), digest, Path(optimized_path))
    return _gate(
        optimize_stage.STAGE, inputs, model_name=model_name, version=version, run_id=run_id,
        policy=policy, verdict_path=verdict_path, previous_path=validate_verdict_path,
    )  # fmt: skip


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
    if (not_run := _not_run("package", optimize_verdict_path, verdict_path)) is not None:
        return not_run
    from modelship.components.package import stage as package_stage

    inputs = package_stage.PackageInputs(
        Path(model_path), digest, Path(optimized_path), Path(packaged_path)
    )
    return _gate(
        package_stage.STAGE, inputs, model_name=model_name, version=version, run_id=run_id,
        policy=policy, verdict_path=verdict_path, previous_path=optimize_verdict_path,
    )  # fmt: skip


def loadtest_step(
    model_name: str,
    version: str,
    run_id: str,
    policy: str,
    package_verdict_path: str,
    packaged_path: str,
    verdict_path: str,
) -> bool:
    if (not_run := _not_run("loadtest", package_verdict_path, verdict_path)) is not None:
        return not_run
    from modelship.components.contract import PackagedInputs
    from modelship.components.loadtest import stage as loadtest_stage

    return _gate(
        loadtest_stage.STAGE, PackagedInputs(Path(packaged_path)), model_name=model_name,
        version=version, run_id=run_id, policy=policy, verdict_path=verdict_path,
        previous_path=package_verdict_path,
    )  # fmt: skip


def rollout_step(
    model_name: str,
    version: str,
    run_id: str,
    policy: str,
    loadtest_verdict_path: str,
    packaged_path: str,
    verdict_path: str,
) -> bool:
    if (not_run := _not_run("rollout", loadtest_verdict_path, verdict_path)) is not None:
        return not_run
    from modelship.components.contract import PackagedInputs
    from modelship.components.rollout import stage as rollout_stage

    return _gate(
        rollout_stage.STAGE, PackagedInputs(Path(packaged_path)), model_name=model_name,
        version=version, run_id=run_id, policy=policy, verdict_path=verdict_path,
        previous_path=loadtest_verdict_path,
    )  # fmt: skip


def conclude_step(
    model_name: str,
    version: str,
    digest: str,
    run_id: str,
    verdict_paths: list[str],
    summary_path: str,
) -> str:
    import json

    from modelship.components import conclude
    from modelship.registry.deployments import DeploymentRun

    def body(events: EventSink) -> dict[str, Any]:
        _, registry = _setup()
        ref = registry.resolve(model_name, version=version)
        verdicts = [Verdict.load(p) for p in verdict_paths]
        return conclude.run(ref, digest, DeploymentRun(registry.client, run_id), verdicts)

    summary = run_step("conclude", body)
    Path(summary_path).write_text(json.dumps(summary, indent=2))
    return str(summary["outcome"])


def monitor_step(model_name: str, policy_yaml: str, report_path: str) -> str:
    """One monitor pass; the windows and actions as JSON; the last window's outcome."""
    import json

    from modelship.components.monitor.passes import monitor_once

    def body(events: EventSink) -> Any:
        settings, _ = _setup()

        def say(message: str) -> None:
            events.emit("monitor", "step", step=message)
            print(message, flush=True)

        return monitor_once(settings, model_name, policy_text=policy_yaml or None, say=say)

    result = run_step("monitor", body)
    windows = [json.loads(w.model_dump_json()) for w in result.windows]
    Path(report_path).write_text(json.dumps({"windows": windows, "actions": result.actions,
                                             "waiting_rows": result.waiting_rows}, indent=2))  # fmt: skip
    return str(windows[-1]["outcome"]) if windows else "waiting"
