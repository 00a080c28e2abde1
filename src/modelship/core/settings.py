"""Settings read once, at an entry point, and passed down as values.

The embedded default keeps everything under ``MODELSHIP_HOME`` (``./.modelship``): an MLflow
SQLite store (``mlflow.db``) and an artifact root (``artifacts/``). ``MLFLOW_TRACKING_URI``
points the same code at a tracking server instead.
"""

from __future__ import annotations

import logging
import os
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from modelship.core.errors import InputError

DEFAULT_HOME = ".modelship"

#: set on every task of a pipeline compiled with ``--secret NAME`` (to NAME): the step runs in a
#: pod whose settings come from that Kubernetes Secret, and checks them before it does anything
SETTINGS_SECRET_ENV = "MODELSHIP_SETTINGS_SECRET"
#: the Secret the shipped pipelines read their settings from (``modelship compile --secret``)
DEFAULT_SECRET = "modelship-settings"
#: Secret keys a pod cannot run without (each becomes the environment variable of its name)
SECRET_REQUIRED = ("MLFLOW_TRACKING_URI",)
#: Secret keys used where present: the tracking server's credentials, the object store's
#: endpoint and credentials (MLflow's S3 artifacts, exported Bentos), the image registry's
SECRET_OPTIONAL = (
    "MLFLOW_TRACKING_TOKEN",
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_S3_ENDPOINT_URL",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_DEFAULT_REGION",
    "MODELSHIP_REGISTRY_USERNAME",
    "MODELSHIP_REGISTRY_PASSWORD",
    # the monitor's notification webhook's HMAC secret (components/monitor/notify.py)
    "MODELSHIP_NOTIFY_SECRET",
)
#: the gateway's admin API token; where it is not set, each gateway start makes a random one
GATEWAY_TOKEN_ENV = "MODELSHIP_GATEWAY_TOKEN"
#: keys that mean nothing one without the other
_SECRET_PAIRS = (
    ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"),
    ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"),
    ("MODELSHIP_REGISTRY_USERNAME", "MODELSHIP_REGISTRY_PASSWORD"),
)


def check_pod_settings(env: Mapping[str, str]) -> None:
    """In a pipeline pod (``SETTINGS_SECRET_ENV`` set), fail at once naming a key the Secret lacks.

    A pod shares nothing but MLflow, the object store and the image registry: a missing or
    local tracking URI would make each step write to its own empty store.
    """
    secret = env.get(SETTINGS_SECRET_ENV)
    if not secret:
        return
    fix = f"add it to the Kubernetes Secret {secret!r} (docs/kubernetes.md lists its keys)"
    for key in SECRET_REQUIRED:
        if not env.get(key):
            raise InputError(f"this pipeline step has no {key}", hint=fix)
    for first, second in _SECRET_PAIRS:
        if bool(env.get(first)) != bool(env.get(second)):
            missing = second if env.get(first) else first
            raise InputError(
                f"this pipeline step has {first if env.get(first) else second} but no {missing}",
                hint=fix.replace("add it", f"add {missing}"),
            )
    uri = env["MLFLOW_TRACKING_URI"]
    if uri.startswith(("sqlite:", "file:")) or "://" not in uri:
        raise InputError(
            f"MLFLOW_TRACKING_URI in Secret {secret!r} is {uri!r}, a store on the pod's own disk",
            hint="point it at the MLflow tracking server every step reaches (http(s)://...)",
        )


@dataclass(frozen=True)
class Settings:
    home: Path
    tracking_uri: str
    registry_uri: str
    #: artifact root for experiments that modelship creates; None: the server decides
    artifact_root: str | None
    #: the folder of per-model policies (MODELSHIP_POLICIES); None: the shipped ones
    policies: Path | None = None
    #: in a pipeline pod, the Kubernetes Secret its settings came from (``SETTINGS_SECRET_ENV``)
    pod_secret: str | None = None
    #: the admin token for the gateways modelship starts (``GATEWAY_TOKEN_ENV``); None: random.
    #: Never in a repr, a log line or a command line: it reaches the gateway in its environment
    gateway_token: str | None = field(default=None, repr=False)
    #: the S3-compatible object store MLflow's artifacts (and the logs) use
    #: (``MLFLOW_S3_ENDPOINT_URL``); None: AWS itself, or no S3
    object_store: str | None = None

    @property
    def bentoml_home(self) -> Path:
        """BentoML's store (the Bentos) lives under modelship's home, beside MLflow's."""
        return self.home / "bentoml"

    @property
    def embedded(self) -> bool:
        return self.artifact_root is not None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        check_pod_settings(env)
        home = Path(env.get("MODELSHIP_HOME") or DEFAULT_HOME).resolve()
        policies = (
            Path(env["MODELSHIP_POLICIES"]).resolve() if env.get("MODELSHIP_POLICIES") else None
        )
        db = home / "mlflow.db"
        uri = f"sqlite:///{db}"
        tracking = env.get("MLFLOW_TRACKING_URI", "")
        # MLflow's set_tracking_uri (in prepare) exports the embedded store's URI to child
        # processes: that is still the embedded store, whose artifacts live under home
        if tracking and tracking != uri:
            return cls(
                home=home,
                tracking_uri=tracking,
                registry_uri=env.get("MLFLOW_REGISTRY_URI", "") or tracking,
                artifact_root=None,
                policies=policies,
                pod_secret=env.get(SETTINGS_SECRET_ENV) or None,
                gateway_token=env.get(GATEWAY_TOKEN_ENV) or None,
                object_store=env.get("MLFLOW_S3_ENDPOINT_URL") or None,
            )
        return cls(
            home=home,
            tracking_uri=uri,
            registry_uri=uri,
            artifact_root=str(home / "artifacts"),
            policies=policies,
            gateway_token=env.get(GATEWAY_TOKEN_ENV) or None,
            object_store=env.get("MLFLOW_S3_ENDPOINT_URL") or None,
        )

    def prepare(self) -> None:
        """Create the home folder and point MLflow at this store (process-wide, once)."""
        import mlflow

        self.home.mkdir(parents=True, exist_ok=True)
        # MLflow's per-file download bars and INFO lines drown modelship's own progress view
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        # read by BentoML when it is first imported, so set before any stage imports it
        os.environ["BENTOML_HOME"] = str(self.bentoml_home)
        os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
        logging.getLogger("mlflow").setLevel(logging.WARNING)
        logging.getLogger("alembic").setLevel(logging.WARNING)
        mlflow.set_tracking_uri(self.tracking_uri)
        mlflow.set_registry_uri(self.registry_uri)
        self.check_reachable()

    def check_reachable(self, timeout_s: float = 5.0, attempts: int = 3) -> None:
        """A tracking server, or an object store named by ``MLFLOW_S3_ENDPOINT_URL``, that does
        not answer fails here, at once and by name, before anything is written, instead of after
        MLflow's or boto3's retries (minutes) in whatever call comes first. Any HTTP answer,
        even 401, 403 or 404, means the server is there; only a refused or silent connection
        fails."""
        if self.tracking_uri.startswith(("http://", "https://")):
            problem = _unanswered(self.tracking_uri.rstrip("/") + "/health", timeout_s, attempts)
            if problem is not None:
                raise InputError(
                    f"the MLflow tracking server at {self.tracking_uri} does not answer "
                    f"({problem})",
                    hint="check MLFLOW_TRACKING_URI (in a pipeline pod: the settings Secret) "
                    "and that the server is up and reachable from here",
                )
        store = self.object_store or ""
        if store.startswith(("http://", "https://")):
            problem = _unanswered(store, timeout_s, attempts)
            if problem is not None:
                raise InputError(
                    f"the object store at {store} does not answer ({problem})",
                    hint="check MLFLOW_S3_ENDPOINT_URL (in a pipeline pod: the settings "
                    "Secret) and that the store is up and reachable from here",
                )

    def child_env(self) -> dict[str, str]:
        """Environment for subprocesses (pipeline steps, probes) so they find the same store."""
        env = dict(os.environ)
        env["MODELSHIP_HOME"] = str(self.home)
        env["BENTOML_HOME"] = str(self.bentoml_home)
        if self.policies is not None:
            env["MODELSHIP_POLICIES"] = str(self.policies)
        env.setdefault("BENTOML_DO_NOT_TRACK", "true")
        if not self.embedded:
            env["MLFLOW_TRACKING_URI"] = self.tracking_uri
            env["MLFLOW_REGISTRY_URI"] = self.registry_uri
        env.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        env.setdefault("GX_ANALYTICS_ENABLED", "false")
        return env


def _unanswered(url: str, timeout_s: float, attempts: int) -> str | None:
    """Why ``url`` gave no HTTP answer in ``attempts`` tries, or None once it answered."""
    problem = ""
    for attempt in range(attempts):
        try:
            with urllib.request.urlopen(url, timeout=timeout_s):
                return None
        except urllib.error.HTTPError:
            return None
        except (OSError, ValueError) as e:
            problem = str(getattr(e, "reason", e))
        if attempt + 1 < attempts:
            time.sleep(1.0)
    return problem
