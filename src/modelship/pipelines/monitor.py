"""The monitor pipeline: one drift-monitor pass over a model's champion, for recurring runs.

No ``from __future__ import annotations`` here: KFP reads the annotations as real types.
Schedule it as a KFP recurring run (or run ``modelship monitor MODEL --once`` from cron); each
pass judges the windows logged since the last one and rolls back when the policy says so.
"""

from kfp import dsl
from kfp.dsl import Artifact, Output

from modelship.pipelines.deploy import IMAGE, configure


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def monitor_model(model_name: str, policy_yaml: str, report: Output[Artifact]) -> str:
    """Judge every whole window of the champion's inference log since the last pass."""
    from modelship.pipelines.steps import monitor_step

    return monitor_step(model_name, policy_yaml, report.path)


def build_monitor(secret: str | None = None) -> dsl.base_component.BaseComponent:
    """The monitor pipeline; with ``secret``, its task's settings come from that Secret."""

    @dsl.pipeline(name="modelship-monitor")
    def monitor_pipeline(model_name: str, policy_yaml: str = "") -> Artifact:
        """Drift monitoring of a registered model's champion: Evidently on its inference log.

        Args:
            model_name: Registered model name in the MLflow Model Registry.
            policy_yaml: The policy itself, as YAML text (modelship submit --monitor --policy FILE sends the whole effective policy); empty uses the image's default.yaml and MODEL.yaml.

        Returns:
            Output: The pass (JSON): each window's outcome and figures, and any action taken.
        """
        task = monitor_model(model_name=model_name, policy_yaml=policy_yaml)
        # a cached pass would judge no new window: every recurring run must run
        configure(task, "monitor", secret)
        return task.outputs["report"]

    return monitor_pipeline


monitor_pipeline = build_monitor()
