"""The deploy pipeline: registry -> validate -> optimize -> package -> load-test -> rollout -> conclude.

No ``from __future__ import annotations`` here: KFP reads the annotations as real types.

Components are thin: each unpacks KFP inputs and calls a step in :mod:`pipelines.steps`.
Compiled to ``pipelines/deploy.yaml`` (``modelship compile``) for the Kubeflow Pipelines UI; run
on one machine by :mod:`pipelines.local`.
"""

from typing import NamedTuple

from kfp import dsl, kubernetes
from kfp.dsl import Artifact, Input, Model, Output

from modelship.components.package.image import PIPELINE_IMAGE_ENV
from modelship.core.settings import SECRET_OPTIONAL, SECRET_REQUIRED, SETTINGS_SECRET_ENV

#: image with modelship installed (built by the package stage's image builder / CI);
#: ``modelship compile --image REF`` writes another reference into the compiled IR
IMAGE = "localhost/modelship:0.1.0"


def configure(task: dsl.PipelineTask, name: str, secret: str | None) -> dsl.PipelineTask:
    """Name a task for the UI, turn its cache off and, with ``secret``, give it its settings.

    Every step writes to MLflow (a verdict, a state tag, an alias), so a cached result would skip
    what the step is there to do. With a Secret, each of its keys in ``SECRET_REQUIRED`` and
    ``SECRET_OPTIONAL`` becomes the environment variable of that name (kfp-kubernetes; a local
    run ignores it) and ``SETTINGS_SECRET_ENV`` tells the step to check them before it starts.
    """
    task.set_display_name(name)
    task.set_caching_options(False)
    if secret:
        kubernetes.use_secret_as_env(task, secret, {k: k for k in SECRET_REQUIRED})
        kubernetes.use_secret_as_env(task, secret, {k: k for k in SECRET_OPTIONAL}, optional=True)
        task.set_env_variable(SETTINGS_SECRET_ENV, secret)
    return task


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def resolve_model(
    model_name: str,
    version: str,
    alias: str,
    policy_yaml: str,
    kfp_run: str,
    model: Output[Model],
) -> NamedTuple(
    "ResolveOutputs", [("version", str), ("digest", str), ("run_id", str), ("policy", str)]
):
    """Resolve the model version, check its digest, load the policy, open the deployment run."""
    from modelship.pipelines.steps import resolve_step

    return resolve_step(model_name, version, alias, policy_yaml, kfp_run, model.path)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def validate_model(
    model: Input[Model],
    model_name: str,
    version: str,
    digest: str,
    run_id: str,
    policy: str,
    verdict: Output[Artifact],
) -> bool:
    """Validation gate: data contract (Great Expectations), model checks, metric gate."""
    from modelship.pipelines.steps import validate_step

    return validate_step(model.path, model_name, version, digest, run_id, policy, verdict.path)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def optimize_model(
    model: Input[Model],
    model_name: str,
    version: str,
    digest: str,
    run_id: str,
    policy: str,
    validate_verdict: Input[Artifact],
    verdict: Output[Artifact],
    optimized: Output[Model],
) -> bool:
    """Optimize gate: ONNX conversion, variants proven equivalent, the fastest one chosen."""
    from modelship.pipelines.steps import optimize_step

    return optimize_step(
        model.path,
        model_name,
        version,
        digest,
        run_id,
        policy,
        validate_verdict.path,
        verdict.path,
        optimized.path,
    )


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def package_model(
    model: Input[Model],
    model_name: str,
    version: str,
    digest: str,
    run_id: str,
    policy: str,
    optimize_verdict: Input[Artifact],
    optimized: Input[Model],
    verdict: Output[Artifact],
    packaged: Output[Artifact],
) -> bool:
    """Package gate: a Bento of the chosen model (bentoml build) and its OCI image."""
    from modelship.pipelines.steps import package_step

    return package_step(
        model.path,
        model_name,
        version,
        digest,
        run_id,
        policy,
        optimize_verdict.path,
        optimized.path,
        verdict.path,
        packaged.path,
    )


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def loadtest_model(
    model_name: str,
    version: str,
    digest: str,
    run_id: str,
    policy: str,
    package_verdict: Input[Artifact],
    packaged: Input[Artifact],
    verdict: Output[Artifact],
) -> bool:
    """Load-test gate: the packaged model under open-loop load, against SLOs and the champion."""
    from modelship.pipelines.steps import loadtest_step

    return loadtest_step(
        model_name, version, run_id, policy, package_verdict.path, packaged.path, verdict.path
    )


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def rollout_model(
    model_name: str,
    version: str,
    digest: str,
    run_id: str,
    policy: str,
    loadtest_verdict: Input[Artifact],
    packaged: Input[Artifact],
    verdict: Output[Artifact],
) -> bool:
    """Canary (or blue-green) rollout against the champion; promotion moves the champion alias."""
    from modelship.pipelines.steps import rollout_step

    return rollout_step(
        model_name, version, run_id, policy, loadtest_verdict.path, packaged.path, verdict.path
    )


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def conclude_deployment(
    model_name: str,
    version: str,
    digest: str,
    run_id: str,
    validate_verdict: Input[Artifact],
    optimize_verdict: Input[Artifact],
    package_verdict: Input[Artifact],
    loadtest_verdict: Input[Artifact],
    rollout_verdict: Input[Artifact],
    summary: Output[Artifact],
) -> str:
    """Record the deployment's outcome from the stages' verdicts and close its MLflow run."""
    from modelship.pipelines.steps import conclude_step

    return conclude_step(
        model_name,
        version,
        digest,
        run_id,
        [
            validate_verdict.path,
            optimize_verdict.path,
            package_verdict.path,
            loadtest_verdict.path,
            rollout_verdict.path,
        ],
        summary.path,
    )


def build_deploy(secret: str | None = None) -> dsl.base_component.BaseComponent:
    """The deploy pipeline; with ``secret``, every task's settings come from that Secret."""

    @dsl.pipeline(name="modelship-deploy")
    def deploy_pipeline(
        model_name: str, version: str = "", alias: str = "", policy_yaml: str = ""
    ) -> Artifact:
        """Take a registered MLflow model version through modelship's gates.

        Args:
            model_name: Registered model name in the MLflow Model Registry.
            version: Version number to deploy; leave empty to use the alias, or the latest version.
            alias: Alias to deploy (for example challenger) when no version is given.
            policy_yaml: The policy itself, as YAML text (modelship submit --policy FILE sends the whole effective policy); empty uses the image's default.yaml and MODEL.yaml.

        Returns:
            Output: The deployment summary (JSON): outcome, digest, MLflow run id and every verdict.
        """
        resolved = resolve_model(
            model_name=model_name,
            version=version,
            alias=alias,
            policy_yaml=policy_yaml,
            # the KFP run's id, tagged on the deployment run: how `submit` finds its outcome
            kfp_run=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
        )
        configure(resolved, "resolve", secret)
        # what every later step is told about the deployment it belongs to
        record = {
            "model_name": model_name,
            "version": resolved.outputs["version"],
            "digest": resolved.outputs["digest"],
            "run_id": resolved.outputs["run_id"],
        }
        policy = resolved.outputs["policy"]
        gate = validate_model(model=resolved.outputs["model"], policy=policy, **record)
        configure(gate, "validate", secret)
        # Each later stage takes the verdict before it and, when that did not pass, records
        # that it did not run: the DAG stays linear and conclude always sees every stage.
        optimized = optimize_model(
            model=resolved.outputs["model"],
            policy=policy,
            validate_verdict=gate.outputs["verdict"],
            **record,
        )
        configure(optimized, "optimize", secret)
        packaged = package_model(
            model=resolved.outputs["model"],
            policy=policy,
            optimize_verdict=optimized.outputs["verdict"],
            optimized=optimized.outputs["optimized"],
            **record,
        )
        configure(packaged, "package", secret)
        # the image the package step runs in is the base of the Bento's image where no builder
        # runs (a pod): `modelship compile --image` rewrites this with the executors' image
        packaged.set_env_variable(PIPELINE_IMAGE_ENV, IMAGE)
        loaded = loadtest_model(
            policy=policy,
            package_verdict=packaged.outputs["verdict"],
            packaged=packaged.outputs["packaged"],
            **record,
        )
        configure(loaded, "load-test", secret)
        rolled = rollout_model(
            policy=policy,
            loadtest_verdict=loaded.outputs["verdict"],
            packaged=packaged.outputs["packaged"],
            **record,
        )
        configure(rolled, "rollout", secret)
        done = conclude_deployment(
            validate_verdict=gate.outputs["verdict"],
            optimize_verdict=optimized.outputs["verdict"],
            package_verdict=packaged.outputs["verdict"],
            loadtest_verdict=loaded.outputs["verdict"],
            rollout_verdict=rolled.outputs["verdict"],
            **record,
        )
        configure(done, "conclude", secret)
        return done.outputs["summary"]

    return deploy_pipeline


#: the deploy pipeline as ``kfp.local`` runs it and as shipped (no Secret)
deploy_pipeline = build_deploy()
