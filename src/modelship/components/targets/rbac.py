"""What the pipeline's pods may do in the namespace they roll out in: a ServiceAccount, a Role
and a RoleBinding.

The rollout step (and the monitor, which rolls back) reads, creates and merge-patches the
serving objects of both cluster targets, and nothing else: KServe's ``InferenceService`` and
Seldon Core v2's ``Model``, ``Pipeline`` and ``Experiment``. Everything else a step touches is outside
Kubernetes (MLflow, the object store, the image registry), reached with the Secret's keys.
Runs use the ServiceAccount through ``modelship submit --service-account`` (KFP's run-level
service account). A ClusterRole lets it read the four CRDs, by name, and nothing else: their
schemas are what each manifest is checked against before it is sent (a namespaced Role cannot
grant that; without it the check is left to the API server's own).
"""

from __future__ import annotations

from modelship.components.targets.cluster import Manifest
from modelship.components.targets.kserve import INFERENCE_SERVICE
from modelship.components.targets.seldon import EXPERIMENT, MODEL, PIPELINE

SERVICE_ACCOUNT = "modelship-pipeline"
#: what the routers call on each kind (tests/test_rbac.py records it): create, and where the
#: object exists, get (its resourceVersion, the patch's precondition) and merge-patch
VERBS = {
    INFERENCE_SERVICE: ["get", "create", "patch"],
    EXPERIMENT: ["get", "create", "patch"],
    MODEL: ["get", "create", "patch"],
    PIPELINE: ["get", "create", "patch"],
}


#: the Secrets the serving pods read storage with (rollout.kubernetes' defaults): the rollout
#: checks they exist before it applies anything, and may read nothing else
SECRETS = ("modelship-settings", "modelship-rclone")


def crd_names() -> list[str]:
    return sorted(resource.crd for resource in VERBS)


def rbac_manifests(
    namespace: str, service_account: str = SERVICE_ACCOUNT, secrets: tuple[str, ...] = SECRETS
) -> list[Manifest]:
    labels = {"app.kubernetes.io/managed-by": "modelship"}
    meta = {"name": service_account, "namespace": namespace, "labels": labels}
    rules = [
        {"apiGroups": [resource.group], "resources": [resource.plural], "verbs": list(verbs)}
        for resource, verbs in VERBS.items()
    ]
    if secrets:  # existence only, of these names only
        rules.append({"apiGroups": [""], "resources": ["secrets"],
                      "resourceNames": sorted(set(secrets)), "verbs": ["get"]})  # fmt: skip
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": dict(meta)},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": dict(meta),
         "rules": rules},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": dict(meta),
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                     "name": service_account},
         "subjects": [{"kind": "ServiceAccount", "name": service_account,
                       "namespace": namespace}]},
        # cluster-scoped, so named for the namespace too: one binding per namespace served
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
         "metadata": {"name": f"{service_account}-crd-reader", "labels": labels},
         "rules": [{"apiGroups": ["apiextensions.k8s.io"],
                    "resources": ["customresourcedefinitions"], "resourceNames": crd_names(),
                    "verbs": ["get"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
         "metadata": {"name": f"{service_account}-crd-reader-{namespace}", "labels": labels},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                     "name": f"{service_account}-crd-reader"},
         "subjects": [{"kind": "ServiceAccount", "name": service_account,
                       "namespace": namespace}]},
    ]  # fmt: skip
