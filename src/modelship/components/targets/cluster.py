"""What the Kubernetes targets (Seldon Core v2, KServe) share: names and labels the API server
accepts, the custom-object API as a small port, and create-or-patch whose errors say what was
being attempted and what to do.

Nothing here knows a Seldon or KServe spec; :mod:`components.rollout.seldon` and
:mod:`components.rollout.kserve` build those. The API object is passed in, so tests hand over a
fake that records calls and no cluster is needed.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, Self

from modelship.components.targets.crdschema import CrdSchema, served_schema
from modelship.core.errors import InputError, StageError

#: a Kubernetes object as the API takes it: plain JSON-able dicts and lists
Manifest = dict[str, Any]

MANAGED_BY = "modelship"
ANNOTATION_PREFIX = "modelship.io"

#: at most 63 characters, lowercase letters, digits and '-', starting with a letter and ending
#: with a letter or digit. This is DNS-1035, a subset of DNS-1123: KServe names its Knative
#: service and host names after the InferenceService and refuses a leading digit, so one rule
#: that suits both targets keeps names the same whichever target a policy picks.
NAME_MAX = 63
_NAME = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
ARTIFACT_FORMATS = ("onnx", "sklearn", "mlflow")


class ManifestError(InputError):
    """A manifest cannot be made from these inputs: a name Kubernetes refuses, a missing image
    or storage URI, or a traffic split the target cannot express."""


class KubernetesError(StageError):
    """A call to the Kubernetes API failed. ``status`` is the HTTP status, None when the API
    server was not reached at all."""

    def __init__(self, message: str, *, status: int | None = None, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.status = status


@dataclass(frozen=True)
class Deployable:
    """One model version as a Kubernetes target serves it.

    ``image`` is the packaged OCI image (KServe runs it); ``storage_uri`` is where the model
    artifact lies in object storage, e.g. ``s3://models/breast-cancer/4`` (Seldon's servers load
    it); ``artifact_format`` says what that artifact is, so Seldon can pick a server for it;
    ``storage_digest`` is the sha256 of the ONNX file there that passed the gates, checked
    again before a cluster is told to load it.
    """

    model: str
    version: str
    image: str | None = None
    storage_uri: str | None = None
    artifact_format: str = "onnx"
    storage_digest: str | None = None
    #: KServe: the Secret with the object store's keys for the Bento's inference log
    storage_secret: str | None = None
    #: Seldon: the Secret with the rclone config that reads ``storage_uri``
    rclone_secret: str | None = None
    #: KServe: the InferenceService's deploymentMode (``rollout.kubernetes.deployment_mode``)
    deployment_mode: str = "Knative"

    def __post_init__(self) -> None:
        if self.artifact_format not in ARTIFACT_FORMATS:
            raise ManifestError(
                f"unknown artifact format {self.artifact_format!r} for {self.model} "
                f"version {self.version}",
                hint=f"use one of {', '.join(ARTIFACT_FORMATS)}",
            )


@dataclass(frozen=True)
class CustomResource:
    """Where the API serves one kind of custom object."""

    group: str
    version: str
    kind: str
    plural: str

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}"

    @property
    def crd(self) -> str:
        return f"{self.plural}.{self.group}"


# -- names and labels ------------------------------------------------------------------------


def _slug(text: str) -> str:
    return re.sub(r"-{2,}", "-", re.sub(r"[^a-z0-9-]+", "-", text.lower())).strip("-")


def k8s_name(model: str, suffix: str = "", *, max_len: int = NAME_MAX) -> str:
    """A valid object name for ``model`` (and ``suffix``, e.g. ``v4``), e.g. ``My_Model`` ->
    ``my-model``.

    Other characters become '-', a leading digit gets ``m-`` in front. A name too long loses the
    end of its model part, which a short digest of the whole model name replaces: the suffix
    survives, so two versions of one long model name never collide.
    """
    base, tail = _slug(model), _slug(suffix)
    if not base:
        raise ManifestError(
            f"model name {model!r} has no letter or digit to make a Kubernetes name from",
            hint="register the model under a name with letters or digits, e.g. breast-cancer",
        )
    if base[0].isdigit():
        base = f"m-{base}"
    room = max_len - (len(tail) + 1 if tail else 0)
    if len(base) > room:
        digest = hashlib.sha256(model.encode()).hexdigest()[:6]
        base = f"{base[: room - len(digest) - 1].rstrip('-')}-{digest}"
    name = f"{base}-{tail}" if tail else base
    if not _NAME.match(name) or len(name) > max_len:
        raise ManifestError(
            f"cannot make a Kubernetes name of at most {max_len} characters from "
            f"{model!r} and {suffix!r} (got {name!r})",
            hint="use a shorter model name of letters, digits and '-'",
        )
    return name


def label_value(text: str) -> str:
    """``text`` as a label value: at most 63 of ``A-Z a-z 0-9 - _ .``, alphanumeric at both ends."""
    value = re.sub(r"[^A-Za-z0-9_.-]+", "-", text)[:NAME_MAX]
    return re.sub(r"^[^A-Za-z0-9]+|[^A-Za-z0-9]+$", "", value)


def check_namespace(namespace: str) -> str:
    if not _DNS1123_LABEL.match(namespace) or len(namespace) > NAME_MAX:
        raise ManifestError(
            f"namespace {namespace!r} is not a valid Kubernetes namespace name",
            hint="use at most 63 lowercase letters, digits and '-', e.g. models",
        )
    return namespace


def metadata(name: str, namespace: str, model: str, version: str | None = None) -> Manifest:
    """Labels select by the sanitized names; annotations keep the registry's own spelling."""
    labels = {
        "app.kubernetes.io/managed-by": MANAGED_BY,
        "app.kubernetes.io/name": k8s_name(model),
    }
    annotations = {f"{ANNOTATION_PREFIX}/registered-model": model}
    if version is not None:
        labels["app.kubernetes.io/version"] = label_value(version)
        annotations[f"{ANNOTATION_PREFIX}/model-version"] = version
    return {
        "name": name,
        "namespace": check_namespace(namespace),
        "labels": labels,
        "annotations": annotations,
    }


def check_pair(champion: Deployable | None, challenger: Deployable) -> None:
    if champion is None:
        return
    if champion.model != challenger.model:
        raise ManifestError(
            f"champion {champion.model!r} and challenger {challenger.model!r} are different models",
            hint="a canary compares two versions of one registered model",
        )
    if champion.version == challenger.version:
        raise ManifestError(
            f"{challenger.model} version {challenger.version} is both champion and challenger",
            hint="deploy a new version, or promote without a canary",
        )


def with_nulls(manifest: Manifest, *paths: tuple[str, ...]) -> Manifest:
    """A merge patch from ``manifest`` that also deletes each path it leaves out.

    A JSON merge patch keeps fields the body does not mention, so a manifest that drops a
    field (no canary percent, no mirror) would leave the old value live; null deletes it.
    """
    patch = copy.deepcopy(manifest)
    for path in paths:
        node = patch
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node.setdefault(path[-1], None)
    return patch


def dig(obj: Manifest, *path: str) -> Any:
    """The value at ``path``, or None where any step is missing."""
    node: Any = obj
    for key in path:
        if not isinstance(node, dict):
            return None
        node = node.get(key)
    return node


# -- the API port ----------------------------------------------------------------------------


class CustomObjects(Protocol):
    """The three calls of ``kubernetes.client.CustomObjectsApi`` that modelship makes."""

    def get_namespaced_custom_object(
        self, group: str, version: str, namespace: str, plural: str, name: str
    ) -> object: ...

    def create_namespaced_custom_object(
        self, group: str, version: str, namespace: str, plural: str, body: Manifest
    ) -> object: ...

    def patch_namespaced_custom_object(
        self, group: str, version: str, namespace: str, plural: str, name: str, body: Manifest
    ) -> object: ...


def load_api(*, config_file: str | None = None, context: str | None = None) -> CustomObjects:
    """The real custom-object API: in-cluster credentials where modelship runs in a pod (a KFP
    step), else the kubeconfig (``config_file``, default ``$KUBECONFIG`` or ``~/.kube/config``)."""
    # imported here: the kubernetes client takes about half a second to import, which
    # `modelship deploy --dry-run` and every other command would otherwise pay for nothing
    from kubernetes import client, config  # type: ignore[import-untyped]

    try:
        if config_file is None and context is None:
            try:
                config.load_incluster_config()
                return client.CustomObjectsApi()  # type: ignore[no-any-return]
            except config.ConfigException:
                pass  # not in a pod: the kubeconfig below
        config.load_kube_config(config_file=config_file, context=context)
    except (config.ConfigException, OSError, TypeError, ValueError) as e:
        where = config_file or "$KUBECONFIG or ~/.kube/config"
        raise KubernetesError(
            f"could not load Kubernetes credentials from {where}"
            + (f" (context {context!r})" if context else "")
            + f": {e}",
            hint="check `kubectl config current-context` works, or point KUBECONFIG at a valid "
            "kubeconfig; inside a pod, give it a service account",
        ) from e
    return client.CustomObjectsApi()  # type: ignore[no-any-return]


def _api_message(body: object) -> str:
    """The API server's own sentence from a Status body, else the body's start."""
    text = body.decode(errors="replace") if isinstance(body, bytes) else str(body or "")
    try:
        parsed = json.loads(text)
    except ValueError:
        return text.strip()[:300]
    return str(parsed.get("message", text)) if isinstance(parsed, dict) else text[:300]


def _hint(status: int | None, resource: CustomResource, namespace: str) -> str:
    hints = {
        401: "the cluster refused the credentials: refresh the kubeconfig's token "
        "(e.g. your cloud's get-credentials command)",
        403: f"grant this identity get, create and patch on {resource.crd} in namespace "
        f"{namespace} (a Role and RoleBinding)",
        404: f"check `kubectl get crd {resource.crd}` (is {resource.kind} installed?) and that "
        f"the object exists in namespace {namespace}: apply the manifests first",
        409: "another writer changed the object meanwhile: retry",
        422: "the API server refused the manifest: compare `modelship deploy --dry-run` "
        f"with the {resource.crd} schema of the installed version",
    }
    if status is not None and status in hints:
        return hints[status]
    return "retry; if it persists, check the API server (`kubectl get --raw /readyz`)"


#: what to install when a kind's CRD is missing, by API group
INSTALL = {
    "mlops.seldon.io": "Seldon Core v2 (its CRDs and operator; modelship's manifests follow "
    "the 2.8/2.9 schemas)",
    "serving.kserve.io": "KServe (0.16 or later; 0.13-0.15 with deployment_mode: Serverless) "
    "with Knative Serving, which its canaries need",
}


def _not_installed(resource: CustomResource, attempt: str) -> ManifestError:
    return ManifestError(
        f"{attempt} failed: {resource.kind} is not installed on this cluster (no CRD "
        f"{resource.crd})",
        hint=f"install {INSTALL.get(resource.group, resource.group)}, or set rollout.target to "
        "the platform the cluster has",
    )


#: tries of a patch that meets 409 Conflict (the object read again before each)
PATCH_ATTEMPTS = 3


class Cluster:
    """Custom-object calls in one namespace, with every failure a :class:`KubernetesError`
    (or, for a missing CRD or namespace, a :class:`ManifestError`: bad input, exit 2)."""

    def __init__(self, api: CustomObjects, namespace: str) -> None:
        self.api = api
        self.namespace = check_namespace(namespace)
        #: each kind's schema as the installed CRD serves it; None: not readable here
        self._schemas: dict[str, CrdSchema | None] = {}

    def schema_problems(self, resource: CustomResource, manifest: Manifest) -> list[str]:
        """What the cluster's own CRD schema for ``resource`` refuses in ``manifest``."""
        if resource.crd not in self._schemas:
            self._schemas[resource.crd] = self._read_schema(resource)
        schema = self._schemas[resource.crd]
        return [] if schema is None else schema.errors(manifest)

    def _read_schema(self, resource: CustomResource) -> CrdSchema | None:
        """The installed CRD's schema for the version modelship writes. None where this identity
        may not read CRDs (403: the API server still validates, on its side) or the API is a
        test's in-memory one."""
        api_client = getattr(self.api, "api_client", None)
        if api_client is None:
            return None
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException  # type: ignore[import-untyped]

        try:  # raw JSON: KServe's CRD is megabytes, and only its schema is wanted
            raw = client.ApiextensionsV1Api(api_client).read_custom_resource_definition(
                resource.crd, _preload_content=False
            )
        except ApiException as e:
            if e.status == 403:
                return None
            if e.status == 404:
                raise _not_installed(resource, f"reading CRD {resource.crd}") from e
            raise KubernetesError(f"reading CRD {resource.crd} failed: HTTP {e.status} "
                                  f"{_api_message(e.body)}", status=e.status) from e  # fmt: skip
        schema = served_schema(json.loads(raw.data), resource.version)
        if schema is None:
            raise ManifestError(
                f"the installed {resource.crd} does not serve {resource.api_version}",
                hint=f"install a version of {INSTALL.get(resource.group, resource.group)}",
            )
        return CrdSchema(schema)

    def _call(
        self, attempt: str, resource: CustomResource, request: Callable[[], object]
    ) -> object:
        # imported on the first call, not at import (see load_api); by then a real API object
        # has already imported it
        import urllib3
        from kubernetes.client.exceptions import ApiException

        try:
            return request()
        except ApiException as e:
            message = _api_message(e.body)
            if e.status == 404 and "could not find the requested resource" in message:
                raise _not_installed(resource, attempt) from e
            if e.status == 404 and message.startswith(f'namespaces "{self.namespace}"'):
                raise ManifestError(
                    f"{attempt} failed: namespace {self.namespace} does not exist",
                    hint=f"kubectl create namespace {self.namespace}, or set "
                    "rollout.kubernetes.namespace to the one the models serve in",
                ) from e
            raise KubernetesError(
                f"{attempt} failed: HTTP {e.status} {e.reason}: {message}",
                status=e.status,
                hint=_hint(e.status, resource, self.namespace),
            ) from e
        except urllib3.exceptions.HTTPError as e:
            raise KubernetesError(
                f"{attempt} failed: the Kubernetes API server could not be reached: {e}",
                hint="check `kubectl cluster-info` from this machine and the kubeconfig's server",
            ) from e

    def get(self, resource: CustomResource, name: str, why: str = "") -> Manifest:
        attempt = f"{why + ': ' if why else ''}reading {resource.kind} {self.namespace}/{name}"
        found = self._call(
            attempt,
            resource,
            lambda: self.api.get_namespaced_custom_object(
                resource.group, resource.version, self.namespace, resource.plural, name
            ),
        )
        if not isinstance(found, dict):
            raise KubernetesError(
                f"{attempt} returned {type(found).__name__}, not an object",
                hint="check the API server and the kubernetes client versions agree",
            )
        return found

    def patch(self, resource: CustomResource, name: str, body: Manifest, why: str) -> None:
        """Merge-patch ``body`` onto the object as it is now: its ``resourceVersion`` goes with
        the patch, so a change someone made meanwhile is never overwritten blind; on 409 the
        object is read again and the patch retried, then it fails saying so."""
        attempt = f"{why}: patching {resource.kind} {self.namespace}/{name}"
        for _ in range(PATCH_ATTEMPTS):
            current = self.get(resource, name, why)
            version = dig(current, "metadata", "resourceVersion")
            meta = {
                **(body.get("metadata") or {}),
                **({"resourceVersion": version} if version else {}),
            }
            guarded = {**body, "metadata": meta}
            try:
                self._call(
                    attempt,
                    resource,
                    lambda guarded=guarded: self.api.patch_namespaced_custom_object(  # type: ignore[misc]
                        resource.group, resource.version, self.namespace, resource.plural, name,
                        guarded,
                    ),
                )  # fmt: skip
                return
            except KubernetesError as e:
                if e.status != 409:
                    raise
        raise KubernetesError(
            f"{attempt} failed: the object changed under every one of {PATCH_ATTEMPTS} tries "
            "(409 Conflict each time, read again before each)",
            status=409,
            hint="another controller writes this object: find it (`kubectl get "
            f"{resource.crd} {name} -o yaml`, managedFields) and stop it, then retry",
        )

    def check_secret(self, name: str, used_for: str) -> None:
        """Refuse to go on when the Secret ``name`` is missing from the namespace: the pods
        that read it would start and fail, far from here. Only where the API is the real
        client's (a test's in-memory API has no Secrets); a 403 (no right to look) passes."""
        api_client = getattr(self.api, "api_client", None)
        if api_client is None:
            return
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        try:
            client.CoreV1Api(api_client).read_namespaced_secret(name, self.namespace)
        except ApiException as e:
            if e.status == 404 and "secrets" in _api_message(e.body):
                raise ManifestError(
                    f"Secret {self.namespace}/{name} does not exist ({used_for})",
                    hint="create it (docs/kubernetes.md says which keys), or name another in "
                    "the policy's rollout.kubernetes",
                ) from e
            if e.status not in (403, 404):
                raise KubernetesError(f"reading Secret {self.namespace}/{name} failed: HTTP "
                                      f"{e.status} {_api_message(e.body)}", status=e.status) from e  # fmt: skip

    def create_or_patch(
        self, resource: CustomResource, manifest: Manifest, patch: Manifest | None = None
    ) -> None:
        """Create the object; where it exists (409), merge-patch it with ``patch``, by default
        the manifest itself."""
        name = manifest["metadata"]["name"]
        try:
            self._call(
                f"creating {resource.kind} {self.namespace}/{name}",
                resource,
                lambda: self.api.create_namespaced_custom_object(
                    resource.group, resource.version, self.namespace, resource.plural, manifest
                ),
            )
        except KubernetesError as e:
            if e.status != 409:
                raise
            self.patch(resource, name, manifest if patch is None else patch, "updating")

    def apply(
        self,
        manifests: Sequence[Manifest],
        resources: Sequence[CustomResource],
        patch_for: Callable[[Manifest], Manifest] = lambda m: m,
    ) -> None:
        """Create or patch each manifest, in order, as the resource matching its kind."""
        by_kind = {(r.api_version, r.kind): r for r in resources}
        problems, chosen = [], []
        for manifest in manifests:
            key = (manifest.get("apiVersion"), manifest.get("kind"))
            if key not in by_kind:
                raise ManifestError(
                    f"cannot apply {key[1]} ({key[0]}) here",
                    hint=f"this target applies {', '.join(r.kind for r in resources)}",
                )
            resource = by_kind[key]
            chosen.append((resource, manifest))
            name = f"{key[1]} {dig(manifest, 'metadata', 'name')}"
            problems += [f"{name}: {p}" for p in self.schema_problems(resource, manifest)]
        if problems:  # every manifest checked before the first is sent: none goes half-way
            raise ManifestError(
                f"the cluster's CRD schema refuses {len(problems)} field(s); nothing was sent: "
                + "; ".join(problems[:5])
                + ("; ..." if len(problems) > 5 else ""),
                hint="compare `modelship deploy --target k8s --dry-run` with the installed CRD "
                "(`kubectl get crd NAME -o yaml`); a field another version of the platform "
                "names differently means that version is not the one modelship targets",
            )
        for resource, manifest in chosen:
            self.create_or_patch(resource, manifest, patch_for(manifest))


class ClusterRouter:
    """What both Kubernetes routers share: the pair they route between and the cluster."""

    def __init__(
        self,
        api: CustomObjects,
        namespace: str,
        champion: Deployable | None,
        challenger: Deployable,
    ) -> None:
        check_pair(champion, challenger)
        self.cluster = Cluster(api, namespace)
        self.champion = champion
        self.challenger = challenger

    @classmethod
    def from_kubeconfig(
        cls,
        namespace: str,
        champion: Deployable | None,
        challenger: Deployable,
        *,
        config_file: str | None = None,
        context: str | None = None,
    ) -> Self:
        api = load_api(config_file=config_file, context=context)
        return cls(api, namespace, champion, challenger)
