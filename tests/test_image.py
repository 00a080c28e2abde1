"""The package stage's OCI image, built with a real builder and started from the image.

buildah is the builder on these machines (no Docker engine): `make test` installs it with
debootstrap. The first build here makes the base image (about a minute); later ones reuse it.
The server is started from the image the way the load-test gate starts it, and must leave no
process behind.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import requests

from modelship.components.serving.server import (
    image_launch,
    pick_port,
    port_free,
    served,
)
from tests.rehearsal import image_registry
from tests.support import (
    breast_cancer,
    deploy_json,
    register_forest,
    settings_for,
    version_tags,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which("buildah") is None, reason="buildah is not installed (make test installs it)"
    ),
]
MODEL = "breast-cancer"


def test_the_image_serves_the_packaged_model(tmp_path: Path) -> None:
    home = tmp_path / "home"
    settings = settings_for(home)
    data = breast_cancer()
    version = register_forest(settings, MODEL, data)
    policy = tmp_path / "image.yaml"
    policy.write_text("package:\n  image: always\nloadtest:\n  enabled: false\n")
    code, summary, err = deploy_json(home, MODEL, "--version", version, "--policy", str(policy))
    assert code == 0, err
    assert summary is not None
    checks = {c["name"]: c for s in summary["stages"] for c in s["checks"]}
    image = checks["package.image"]
    assert image["passed"] and not image["skipped"], image["reason"]
    assert "built with buildah" in image["reason"]

    port = pick_port(None)
    launch = image_launch(image["measured"], port, None)
    with served(launch, port, tmp_path / "image-serve.log", 180) as server:
        row: dict[str, Any] = data[3].drop(columns=["target"]).iloc[0].to_dict()
        answer = requests.post(f"{server.url}/predict", data=json.dumps({"inputs": [row]}),
                               headers={"content-type": "application/json"}, timeout=30)  # fmt: skip
        members = list(server.members.values())
    assert answer.status_code == 200, answer.text
    assert answer.json()[0]["prediction"] in (0, 1)
    assert answer.headers["x-modelship-model"] == f"{MODEL}/{version}"
    assert len(members) >= 2, "the server's processes inside the container were not seen"
    assert not [m.pid for m in members if m.is_running()], "a process from the image outlived it"
    assert port_free(port)


@pytest.mark.skipif(
    shutil.which("docker-registry") is None, reason="no docker-registry (make image-tools)"
)
def test_the_image_is_pushed_to_the_policys_registry_and_recorded_by_digest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with image_registry(tmp_path / "registry") as registry:
        monkeypatch.setenv(
            "CONTAINERS_REGISTRIES_CONF", str(tmp_path / "registry" / "registries.conf")
        )
        home = tmp_path / "home"
        settings = settings_for(home)
        version = register_forest(settings, MODEL, breast_cancer())
        policy = tmp_path / "push.yaml"
        policy.write_text(
            f"package:\n  image: always\n  registry: {registry}/models\nloadtest:\n  enabled: false\n"
        )
        # the CLI inherits CONTAINERS_REGISTRIES_CONF, as a user's shell would hand it on
        code, summary, err = deploy_json(home, MODEL, "--version", version, "--policy", str(policy))
        assert code == 0, err
        assert summary is not None
        checks = {c["name"]: c for s in summary["stages"] for c in s["checks"]}
        pushed = checks["package.image.push"]
        assert pushed["passed"], pushed["reason"]
        ref = pushed["measured"]
        repository, digest = ref.split("@")
        assert repository.startswith(f"{registry}/models/modelship-breast-cancer")
        # the registry serves that manifest under the version's tag, with that digest
        name, tag = (
            repository.removeprefix(f"{registry}/"),
            checks["package.bento"]["measured"].split(":")[1],
        )
        answer = requests.head(
            f"http://{registry}/v2/{name}/manifests/{tag}", timeout=10,
            headers={"Accept": "application/vnd.oci.image.manifest.v1+json, "
                     "application/vnd.docker.distribution.manifest.v2+json"},
        )  # fmt: skip
        assert answer.status_code == 200 and answer.headers["Docker-Content-Digest"] == digest
        assert version_tags(MODEL)[version]["modelship.image"] == ref  # recorded by digest
        # another machine (an empty image store) pulls it by that digest
        store = tmp_path / "other-store"
        pulled = subprocess.run(
            ["buildah", "--root", str(store / "root"), "--runroot", str(store / "run"),
             "--storage-driver", "vfs", "pull", "--quiet", ref],
            capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert pulled.returncode == 0, pulled.stderr
        # and the image says which Bento it holds: the digest the version records
        label = subprocess.run(
            ["buildah", "--root", str(store / "root"), "--runroot", str(store / "run"),
             "--storage-driver", "vfs", "inspect", "--format",
             '{{index .OCIv1.Config.Labels "modelship.bento.digest"}}', ref],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert label.stdout.strip() == version_tags(MODEL)[version]["modelship.bento_digest"]
