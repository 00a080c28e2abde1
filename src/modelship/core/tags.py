"""The MLflow tags modelship writes: on a model version, and on a deployment's run.

One place, so a person (or a dashboard) can find every name modelship uses, and no stage has to
import another to read what it wrote.
"""

from __future__ import annotations

# on a model version
TAG_STATE = "modelship.state"
TAG_REASON = "modelship.reason"
TAG_DIGEST = "modelship.digest"
TAG_RUN = "modelship.deployment_run"
TAG_VARIANT = "modelship.optimize.variant"
TAG_SPEEDUP = "modelship.optimize.speedup"
TAG_BENTO = "modelship.bento"
#: the exported Bento in the deployment's MLflow run (``runs:/...``), and its files' digest
TAG_BENTO_URI = "modelship.bento_uri"
TAG_BENTO_DIGEST = "modelship.bento_digest"
TAG_IMAGE = "modelship.image"
#: the ONNX model in Triton's layout in object storage (Seldon's ``Model.spec.storageUri``),
#: and the sha256 of its ``1/model.onnx``, the file that passed the gates
TAG_TRITON_URI = "modelship.triton_uri"
TAG_TRITON_DIGEST = "modelship.triton_digest"
TAG_REPORT = "modelship.rollback_report"
#: the Kubernetes objects that serve the version (``Kind/namespace/name``, comma-separated)
TAG_K8S_OBJECTS = "modelship.k8s_objects"
#: when the version last began to serve (unix seconds): its canary started, it became champion
#: with no canary, or a rollback restored it. The drift monitor reads its log from then on, so
#: rows from an earlier time it served (before a rollback, say) are never judged again.
TAG_LIVE_SINCE = "modelship.live_since"

# on a deployment's MLflow run (experiment ``modelship-deployments``)
RUN_MODEL = "modelship.model"
RUN_VERSION = "modelship.version"
RUN_OUTCOME = "modelship.outcome"
RUN_ERROR = "modelship.error"
#: the Kubeflow Pipelines run that made a deployment run (how `modelship submit` finds it)
RUN_KFP = "modelship.kfp_run"
RUN_BENTO_DIGEST = "modelship.bento_digest"
#: the process that runs the deployment on this machine (``HOST PID:START_TICKS``, from
#: ``modelship.core.lifeline``), so a run it left open when it was killed reads as interrupted
RUN_OWNER = "modelship.owner"
#: ``TIME HOST``: the last sign of life of the step that works on the deployment (each step
#: renews it while it runs), so a run whose pod was killed elsewhere reads as interrupted
RUN_HEARTBEAT = "modelship.heartbeat"
