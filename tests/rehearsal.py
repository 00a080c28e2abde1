"""A cluster rehearsal on one machine: the compiled ``pipelines/deploy.yaml`` with every task in
its own "pod" that shares nothing but MLflow, the object store and KFP's artifacts.

What is real: an S3 server (moto, in its own process), an ``mlflow server`` whose artifact root
is that S3 bucket and which does not proxy artifacts (so every pod writes and reads S3 itself,
with boto3 and the Secret's keys), the compiled IR's own task commands (KFP's executor, the same
bytes a cluster runs), and ``kfp.local``'s orchestration of them.

What stands in for Kubernetes: each task runs as a process with a fresh empty working folder and
``HOME`` (so its MODELSHIP_HOME and BentoML store start empty and die with it) and an environment
of only ``PATH``, the node's container-tools setting (``CONTAINERS_REGISTRIES_CONF``: which
registry is plain HTTP), the container env the IR sets, and the keys the IR's platform spec maps
from the Secret (``secretAsEnv``; a required key that the Secret lacks fails the pod, as Kubernetes'
CreateContainerConfigError does). This replaces ``kfp.local``'s subprocess launcher, which would
otherwise hand every task this process's environment and folder. A pod's folder is moved away
when the pod ends, as a pod's file system goes with it: a later task that reads a path an
earlier one wrote finds nothing.

KFP's artifacts move as KFP's launcher moves them (``Launcher``): the pipeline root is in the
object store (``s3://modelship/pipeline-root``), each task's executor is told ``s3://`` URIs and
so reads and writes them at ``/s3/...`` (kfp's executor maps one to the other), the launcher
downloads a task's input artifacts there before it starts and uploads its output artifacts after
it succeeds. That ``/s3`` is the pod's own: a bind mount in a mount namespace of its own
(``unshare``) for a process, a volume for a container. Nothing but the launcher's metadata (the
executor's output file, which kfp.local reads back) stays in ``kfp.local``'s folder. The image
registry is real (distribution's ``docker-registry``); the node's image store (buildah's) is
shared by the pods, as a node's image cache is. The Kubernetes API is ``tests/servers/kubeapi.py``
(custom objects over HTTP), reached through a kubeconfig in each pod's home.

Without ``image`` a pod is a process of this virtual environment. With ``image`` (the pipeline
image: tests/test_rehearsal.py builds it from this checkout, `make rehearse IMAGE=REF` names
another) each pod is a container of that image instead (``buildah from`` + ``buildah run --isolation chroot``, which shares this host's
network, so the servers on 127.0.0.1 answer), with only the pod's folder and its ``/s3``
mounted: the steps then run the image's modelship, not this checkout's. The node pulls the image
from the registry into an image store of its own (buildah's overlay driver, where the machine
can mount overlays: a container is made in a fraction of a second, not the minute vfs takes).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelship.core.ports import free_port
from modelship.pipelines.compile import read_ir
from tests.support import background, wait_http

BUCKET = "modelship"
#: KFP's pipeline root on the rehearsal's cluster (KFP's own default is ``minio://mlpipeline/v2/
#: artifacts``, on its MinIO); kfp's executor reads an ``s3://B/K`` artifact at ``/s3/B/K``
PIPELINE_ROOT = f"s3://{BUCKET}/pipeline-root"
S3_MOUNT = "/s3"
#: the keys of the rehearsal's Secret that are not URLs (moto takes any)
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "rehearsal",
    "AWS_SECRET_ACCESS_KEY": "rehearsal-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@contextlib.contextmanager
def object_store(root: Path) -> Iterator[str]:
    """A real S3 API (moto_server) on a free loopback port, with the bucket made."""
    import boto3

    port = free_port()
    cmd = [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)]
    with background(cmd, root / "s3.log") as proc:
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/moto-api/", proc, root / "s3.log", timeout=60)
        s3 = boto3.client("s3", endpoint_url=url, **_boto_keys())
        s3.create_bucket(Bucket=BUCKET)
        yield url


def _boto_keys() -> dict[str, str]:
    return {
        "aws_access_key_id": CREDENTIALS["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        "region_name": CREDENTIALS["AWS_DEFAULT_REGION"],
    }


def s3_keys(s3_url: str, prefix: str = "") -> list[str]:
    pages = _s3(s3_url).get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


@contextlib.contextmanager
def tracking_server(root: Path, s3_url: str, *, proxied: bool = False) -> Iterator[str]:
    """``mlflow server`` with a SQLite backend and artifacts in the bucket, not proxied (every
    client reads and writes S3 itself); ``proxied``: the server does it for them
    (``--artifacts-destination``, under ``s3://modelship/proxied``), clients need only its URI."""
    port = free_port()
    name = "proxied" if proxied else "mlflow"
    artifacts = (["--artifacts-destination", f"s3://{BUCKET}/proxied"] if proxied else
                 ["--default-artifact-root", f"s3://{BUCKET}/mlflow", "--no-serve-artifacts"])  # fmt: skip
    cmd = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", f"sqlite:///{root / f'{name}.db'}", *artifacts,
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "MODELSHIP_"))},
        **CREDENTIALS,
        "MLFLOW_S3_ENDPOINT_URL": s3_url,
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    }
    with background(cmd, root / f"{name}.log", env) as proc:
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/health", proc, root / f"{name}.log", timeout=120)
        yield url


@contextlib.contextmanager
def image_registry(root: Path) -> Iterator[str]:
    """A real OCI registry (distribution's docker-registry) on a free loopback port, declared
    insecure (plain HTTP) in a registries.conf of its own, as a containers user would."""
    port = free_port()
    (root / "data").mkdir(parents=True)
    config = root / "config.yml"
    config.write_text(
        "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: " + str(root / "data")
        + f"\nhttp:\n  addr: 127.0.0.1:{port}\n"
    )  # fmt: skip
    conf = root / "registries.conf"
    conf.write_text(f'[[registry]]\nlocation = "127.0.0.1:{port}"\ninsecure = true\n')
    with background(["docker-registry", "serve", str(config)], root / "registry.log") as proc:
        wait_http(f"http://127.0.0.1:{port}/v2/", proc, root / "registry.log", timeout=30)
        yield f"127.0.0.1:{port}"


def _overlay(root: Path) -> list[str]:
    """buildah on the image store at ``root``, with the overlay driver."""
    return ["buildah", "--storage-driver", "overlay", "--root", str(root / "storage"),
            "--runroot", str(root / "run")]  # fmt: skip


def overlay_store(root: Path) -> Path | None:
    """``root`` as a node's image store with buildah's overlay driver, where this machine can
    mount overlays (else None: pods then use the machine's own vfs store, much slower)."""
    node = _overlay(root)
    made = subprocess.run([*node, "from", "--quiet", "scratch"], capture_output=True, text=True)
    if made.returncode != 0:
        return None
    try:
        mounted = subprocess.run([*node, "mount", made.stdout.strip()], capture_output=True)
        return root if mounted.returncode == 0 else None
    finally:
        subprocess.run([*node, "rm", made.stdout.strip()], capture_output=True, check=False)


#: what buildah's chroot runtime says when it failed to start the container, before the task
#: ran (seen here now and then: sealing its memfd copy of itself fails with EBUSY)
_RUNTIME_ERRORS = (b"sealing memfd copy",)


def _runtime_failed(said: bytes) -> bool:
    return any(error in said for error in _RUNTIME_ERRORS) and len(said.splitlines()) <= 3


def drop_store(root: Path) -> None:
    """Remove an image store :func:`overlay_store` made, and what it holds."""
    node = _overlay(root)
    subprocess.run([*node, "rm", "--all"], capture_output=True, check=False)
    subprocess.run([*node, "rmi", "--all", "--force"], capture_output=True, check=False)
    shutil.rmtree(root, ignore_errors=True)


def s3_folder(folder: Path) -> Path:
    """Where a pod's ``/s3`` lies on the node: in the pod's own folder."""
    return folder / "s3"


@dataclass
class Launcher:
    """KFP's launcher for one task: the artifacts through the object store, never a shared folder.

    ``local_root`` is ``kfp.local``'s pipeline root, where it names a first task's outputs and
    reads each task's executor output back; ``folder`` is the pod's own."""

    s3_url: str
    local_root: Path
    folder: Path
    #: the artifacts to upload after the task: ``s3://`` URI -> output name
    outputs: dict[str, str] = field(default_factory=dict)
    #: the launcher's files the task writes in its own folder -> where kfp.local reads them
    metadata: dict[Path, Path] = field(default_factory=dict)

    @property
    def pod_s3(self) -> Path:
        """What the task sees at ``/s3``."""
        return s3_folder(self.folder)

    def prepare(self, command: list[str]) -> list[str]:
        """``command`` with its executor input pointing at the object store, the task's input
        artifacts downloaded into its ``/s3``."""
        self.pod_s3.mkdir()
        at = command.index("--executor_input") + 1
        spec = json.loads(command[at])
        for artifacts in spec.get("inputs", {}).get("artifacts", {}).values():
            for artifact in artifacts["artifacts"]:
                artifact["uri"] = self._remote(artifact["uri"])
                self._download(artifact["uri"], artifact["name"])
        outputs = spec["outputs"]
        for name, artifacts in outputs.get("artifacts", {}).items():
            for artifact in artifacts["artifacts"]:
                artifact["uri"] = self._remote(artifact["uri"])
                self.outputs[artifact["uri"]] = name
        mine = self.folder / "kfp_outputs"
        mine.mkdir()
        for name, parameter in outputs.get("parameters", {}).items():
            parameter["outputFile"] = self._own(Path(parameter["outputFile"]), mine / name)
        outputs["outputFile"] = self._own(
            Path(outputs["outputFile"]), mine / "output_metadata.json"
        )
        return [*command[:at], json.dumps(spec), *command[at + 1 :]]

    def finish(self) -> None:
        """After the task succeeded: its output artifacts up to the object store (a missing one
        fails the task, as the launcher's upload does), its metadata back to kfp.local."""
        s3 = _s3(self.s3_url)
        for uri, name in self.outputs.items():
            key = _key(uri)
            local = self.pod_s3 / BUCKET / key
            files = (
                [local] if local.is_file() else sorted(f for f in local.rglob("*") if f.is_file())
            )
            if not files:
                raise AssertionError(f"output artifact {name}: the task wrote nothing at {local}")
            for file in files:
                suffix = "" if file == local else "/" + file.relative_to(local).as_posix()
                s3.upload_file(str(file), BUCKET, key + suffix)
        for own, theirs in self.metadata.items():
            if own.exists():
                theirs.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(own, theirs)

    def _own(self, theirs: Path, own: Path) -> str:
        self.metadata[own] = theirs
        return str(own)

    def _remote(self, uri: str) -> str:
        if uri.startswith(str(self.local_root)):
            return PIPELINE_ROOT + uri[len(str(self.local_root)) :]
        if not uri.startswith(f"s3://{BUCKET}/"):
            raise AssertionError(f"an artifact outside the object store: {uri}")
        return uri

    def _download(self, uri: str, name: str) -> None:
        s3, key = _s3(self.s3_url), _key(uri)
        local = self.pod_s3 / BUCKET / key
        found = s3_keys(self.s3_url, key)
        if key in found:
            local.parent.mkdir(parents=True, exist_ok=True)
            s3.download_file(BUCKET, key, str(local))
            return
        inside = [k for k in found if k.startswith(key + "/")]
        if not inside:
            raise AssertionError(f"input artifact {name}: nothing at {uri} in the object store")
        for k in inside:
            (local / k[len(key) + 1 :]).parent.mkdir(parents=True, exist_ok=True)
            s3.download_file(BUCKET, k, str(local / k[len(key) + 1 :]))


def _s3(s3_url: str) -> Any:
    import boto3

    return boto3.client("s3", endpoint_url=s3_url, **_boto_keys())


def _key(uri: str) -> str:
    return uri.removeprefix(f"s3://{BUCKET}/")


def read_artifact(s3_url: str, uri: str) -> bytes:
    """The bytes of a pipeline's artifact (one file) at ``uri``, read from the object store."""
    return bytes(_s3(s3_url).get_object(Bucket=BUCKET, Key=_key(uri))["Body"].read())


@dataclass
class Pod:
    task: str
    folder: Path
    env: dict[str, str]
    returncode: int | None = None


@dataclass
class Cluster:
    """Runs a compiled pipeline's tasks as pods (see the module's docstring)."""

    root: Path
    secret: Mapping[str, str]
    pods: list[Pod] = field(default_factory=list)
    #: run each pod as a container of this image (the pipeline image) instead of a process
    image: str | None = None
    #: what every pod gets from the node, not from the Secret
    node_env: Mapping[str, str] = field(default_factory=dict)
    #: a kubeconfig put at ``~/.kube/config`` in every pod
    kubeconfig: Path | None = None
    #: the object store KFP's artifacts move through (the pipeline root is in it)
    s3_url: str = ""
    #: the node's image store (buildah, overlay driver: a container starts at once, where the
    #: machine's vfs store copies the whole image for each); see :func:`overlay_store`
    node_store: Path | None = None

    def _launch(self, command: list[str], folder: Path, env: dict[str, str]) -> int:
        s3 = s3_folder(folder)
        with (folder / "pod.log").open("w") as log:
            if self.image is None:
                # the pod's own /s3: a bind mount only its mount namespace sees (the mount point
                # itself, an empty folder, is made once on this machine)
                Path(S3_MOUNT).mkdir(exist_ok=True)
                private = ["unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c",
                           f'mount --bind "$0" {S3_MOUNT} && exec "$@"', str(s3)]  # fmt: skip
                return subprocess.run([*private, *command], cwd=folder, env=env, stdout=log,
                                      stderr=subprocess.STDOUT, check=False, timeout=1800).returncode  # fmt: skip
            node = self._node()
            # the node pulls the image (by digest, from the registry) with its own
            # registries.conf, and keeps it for the next pod
            pulled = subprocess.run([*node, "from", "--quiet", self.image], capture_output=True,
                                    text=True, env={**os.environ, **self.node_env})  # fmt: skip
            if pulled.returncode != 0:
                raise AssertionError(f"ErrImagePull: {self.image}: {pulled.stderr.strip()}")
            container = pulled.stdout.strip()
            try:
                # kfp.local put this interpreter where the IR says python3: the image's own
                # python3 runs the step in the container
                inside = [part.replace(sys.executable, "python3") for part in command]
                mounts = [f"--volume={folder}:{folder}", f"--volume={s3}:{S3_MOUNT}"]
                # the node's files a pod's env names (its registries.conf), read-only, as a
                # cluster mounts a ConfigMap
                mounts += [f"--volume={v}:{v}:ro" for v in self.node_env.values()
                           if Path(v).is_file()]  # fmt: skip
                settings = [f"--env={k}={v}" for k, v in env.items() if k != "PATH"]
                run = [*node, "run", "--isolation", "chroot", f"--workingdir={folder}", *mounts,
                       *settings, container, "--", *inside]  # fmt: skip
                for _ in range(3):
                    log.flush()
                    start = (folder / "pod.log").stat().st_size
                    code = subprocess.run(run, stdout=log, stderr=subprocess.STDOUT, check=False,
                                          timeout=1800).returncode  # fmt: skip
                    said = (folder / "pod.log").read_bytes()[start:]
                    if code == 0 or not _runtime_failed(said):
                        return code
                    # the container never started (buildah's chroot runtime, a transient
                    # error): tried again, as the kubelet retries a container that failed
                    # to be created
                    log.write("(the container did not start; trying again)\n")
                return code
            finally:
                subprocess.run([*node, "rm", container], capture_output=True, check=False)

    def _node(self) -> list[str]:
        """buildah on the node's image store: ``node_store`` (overlay) where given, else the
        machine's own (vfs)."""
        if self.node_store is None:
            from modelship.components.containers import BUILDAH

            return list(BUILDAH)
        return _overlay(self.node_store)

    def secret_env(self, package: Path) -> dict[str, str]:
        """The environment Kubernetes would build from the Secret for this package's tasks."""
        _, platform = read_ir(package)
        assert platform is not None, f"{package} maps no Secret into its pods"
        executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
        env: dict[str, str] = {}
        for spec in executors.values():
            for entry in spec["secretAsEnv"]:
                for pair in entry["keyToEnv"]:
                    key = pair["secretKey"]
                    if key in self.secret:
                        env[pair["envVar"]] = self.secret[key]
                    elif not entry["optional"]:
                        raise AssertionError(
                            f"CreateContainerConfigError: couldn't find key {key} in Secret "
                            f"{entry['secretName']}"
                        )
        return env

    def run(self, package: Path, arguments: dict[str, Any]) -> Any:
        """Run ``package`` (compiled IR) to the end with ``kfp.local``, each task in a pod."""
        from kfp import components, local
        from kfp.local import subprocess_task_handler

        secret_env = self.secret_env(package)
        pods, root = self.pods, self.root

        def run_pod(full_command: list[str], env_vars: dict[str, str] | None = None) -> int:
            task = full_command[full_command.index("--function_to_execute") + 1]
            folder = Path(tempfile.mkdtemp(prefix=f"{len(pods):02d}-{task}-", dir=root))
            env = {"PATH": os.environ["PATH"], "HOME": str(folder), "LANG": "C.UTF-8",
                   **self.node_env, **secret_env, **(env_vars or {})}  # fmt: skip
            if self.kubeconfig is not None:
                (folder / ".kube").mkdir()
                (folder / ".kube" / "config").write_bytes(self.kubeconfig.read_bytes())
            pod = Pod(task, folder, env)
            pods.append(pod)
            launcher = Launcher(self.s3_url, root / "pipeline-root", folder)
            try:
                pod.returncode = self._launch(launcher.prepare(full_command), folder, env)
                if pod.returncode == 0:
                    launcher.finish()
            finally:
                # the pod's file system goes with it: no later pod finds a path it wrote
                pod.folder = folder.rename(root / "ended" / folder.name)
            return pod.returncode

        assert self.s3_url, "the rehearsal's cluster needs its object store (s3_url)"
        (root / "ended").mkdir(parents=True, exist_ok=True)
        local.init(
            runner=local.SubprocessRunner(use_venv=False),
            pipeline_root=str(root / "pipeline-root"),
        )
        pipeline = components.load_component_from_file(str(package))
        original = subprocess_task_handler.run_local_subprocess
        subprocess_task_handler.run_local_subprocess = run_pod
        try:
            with contextlib.redirect_stdout(sys.stderr):
                return pipeline(**arguments)
        finally:
            subprocess_task_handler.run_local_subprocess = original

    def pod(self, task: str) -> Pod:
        found = [p for p in self.pods if p.task == task]
        assert found, f"no pod ran {task}: {[p.task for p in self.pods]}"
        return found[-1]

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.folder.name} (exit {p.returncode})\n{(p.folder / 'pod.log').read_text()[-3000:]}"
            for p in self.pods
        )
