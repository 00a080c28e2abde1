"""The package stage's OCI image, built with a real builder and started from the image.

buildah is the builder on these machines (no Docker engine): `make test` installs it with
debootstrap. The first build here makes the base image (about a minute); later ones reuse it.
The server is started from the image the way the load-test gate starts it, and must leave no
process behind.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import requests

from modelship.components.serving.server import image_launch, pick_port, port_free, served
from tests.support import breast_cancer, deploy_json, register_forest, settings_for

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
