"""The monitor pipeline: one drift-monitor pass over a model's champion, for recurring runs.

No ``from __future__ import annotations`` here: KFP reads the annotations as real types.
Schedule it as a KFP recurring run (or run ``modelship monitor MODEL --once`` from cron); each
pass judges the windows logged since the last one and rolls back when the policy says so.
"""

from kfp import dsl
from kfp.dsl import Artifact, Output

from modelship.pipelines.deploy import IMAGE, uncached


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def monitor_model(model_name: str, policy_file: str, report: Output[Artifact]) -> str:
    """Judge every whole window of the champion's inference log since the last pass."""
    from modelship.pipelines.steps import monitor_step

    return monitor_step(model_name, policy_file, report.path)


@dsl.pipeline(name="modelship-monitor")
def monitor_pipeline(model_name: str, policy_file: str = "") -> Artifact:
    """Drift monitoring of a registered model's champion: Evidently on its inference log.

    Args:
        model_name: Registered model name in the MLflow Model Registry.
        policy_file: Path of a policy override YAML; empty uses policies/default.yaml and the model's own policies/<model_name>.yaml.

    Returns:
        Output: The pass (JSON): each window's outcome and figures, and any action taken.
    """
    task = monitor_model(model_name=model_name, policy_file=policy_file)
    # a cached pass would judge no new window: every recurring run must run
    uncached(task, "monitor")
    return task.outputs["report"]
