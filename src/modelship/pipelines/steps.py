"""What each KFP component runs: unpack KFP's plain values, build the stage's inputs, call it.

Each step is the entry point of its own process, so this is where settings are read (once).
Only what every step needs is imported here: a stage whose gate before it did not pass records
that it did not run without loading MLflow or its stage's libraries (:func:`_gate`).
"""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from modelship.components.runtime import run_step
from modelship.core.events import EventSink
from modelship.core.verdict import Verdict

if TYPE_CHECKING:
    from modelship.components.contract import ModelInputs, PackagedInputs, Stage
    from modelship.components.optimize.stage import OptimizeInputs
    from modelship.components.package.stage import PackageInputs
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
    name: str,
    load: Callable[[], tuple[Stage[I], I]],
    *,
    model_name: str,
    version: str,
    run_id: str,
    policy: str,
    verdict_path: str,
    previous_path: str | None = None,
) -> bool:
    """Run a gate's stage (``load`` imports it and builds its inputs) through the shared
    runner; save its verdict for the next step. When the gate before it did not pass, the
    ``not run`` verdict is recorded before ``load`` or MLflow is imported: on a cluster such a
    step is still a pod, and here a process, that only has to say it did not run."""
    previous = Verdict.load(previous_path) if previous_path else None
    if previous is not None and not previous.passed:
        verdict = run_step(name, lambda _: Verdict.not_run(name, previous))
        verdict.save(verdict_path)
        return False
    from modelship.components.contract import StageContext, run_stage
    from modelship.policies.schema import Policy
    from modelship.registry.deployments import DeploymentRun

    stage, inputs = load()

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
        with deployment.beating():  # a step killed with its pod stops beating
            return run_stage(stage, ctx, inputs, previous)

    verdict = run_step(stage.name, body)
    verdict.save(verdict_path)
    return verdict.passed


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
    def load() -> tuple[Stage[ModelInputs], ModelInputs]:
        from modelship.components.contract import ModelInputs
        from modelship.components.validate import stage

        return stage.STAGE, ModelInputs(Path(model_path), digest)

    return _gate(
        "validate", load, model_name=model_name, version=version, run_id=run_id,
        policy=policy, verdict_path=verdict_path,
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
    def load() -> tuple[Stage[OptimizeInputs], OptimizeInputs]:
        from modelship.components.optimize import stage

        return stage.STAGE, stage.OptimizeInputs(Path(model_path), digest, Path(optimized_path))

    return _gate(
        "optimize", load, model_name=model_name, version=version, run_id=run_id,
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
    def load() -> tuple[Stage[PackageInputs], PackageInputs]:
        from modelship.components.package import stage

        return stage.STAGE, stage.PackageInputs(
            Path(model_path), digest, Path(optimized_path), Path(packaged_path)
        )

    return _gate(
        "package", load, model_name=model_name, version=version, run_id=run_id,
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
    def load() -> tuple[Stage[PackagedInputs], PackagedInputs]:
        from modelship.components.contract import PackagedInputs
        from modelship.components.loadtest import stage

        return stage.STAGE, PackagedInputs(Path(packaged_path))

    return _gate(
        "loadtest", load, model_name=model_name, version=version, run_id=run_id,
        policy=policy, verdict_path=verdict_path, previous_path=package_verdict_path,
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
    def load() -> tuple[Stage[PackagedInputs], PackagedInputs]:
        from modelship.components.contract import PackagedInputs
        from modelship.components.rollout import stage

        return stage.STAGE, PackagedInputs(Path(packaged_path))

    return _gate(
        "rollout", load, model_name=model_name, version=version, run_id=run_id,
        policy=policy, verdict_path=verdict_path, previous_path=loadtest_verdict_path,
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
