"""The package stage's OCI image, built with a real builder and started from the image.

buildah is the builder on these machines (no Docker engine): `make test` installs it with
debootstrap. The first build here makes the base image (about a minute); later ones reuse it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
import requests

from components.package.image import BUILDAH, processes_rooted_at, stop_container
from tests.support import (
    breast_cancer,
    deploy_json,
    free_port,
    register_forest,
    settings_for,
    wait_http,
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
    policy.write_text("package:\n  image: always\n")
    code, summary, err = deploy_json(home, MODEL, "--version", version, "--policy", str(policy))
    assert code == 0, err
    assert summary is not None
    checks = {c["name"]: c for s in summary["stages"] for c in s["checks"]}
    image = checks["package.image"]
    assert image["passed"] and not image["skipped"], image["reason"]
    ref = image["measured"]
    assert "built with buildah" in image["reason"]

    container = subprocess.run(
        [*BUILDAH, "from", ref], capture_output=True, text=True, check=True
    ).stdout.strip()
    port = free_port()
    log = tmp_path / "image-serve.log"
    cmd = [*BUILDAH, "run", "--isolation", "chroot", container, "--",
           "bentoml", "serve", "bentos.service:ModelService", "--host", "127.0.0.1",
           "--port", str(port)]  # fmt: skip
    try:
        with log.open("w") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)  # fmt: skip
        try:
            url = f"http://127.0.0.1:{port}"
            wait_http(f"{url}/readyz", proc, log, timeout=180)
            row: dict[str, Any] = data[3].drop(columns=["target"]).iloc[0].to_dict()
            answer = requests.post(f"{url}/predict", data=json.dumps({"inputs": [row]}),
                                   headers={"content-type": "application/json"}, timeout=30)  # fmt: skip
            assert answer.status_code == 200, answer.text
            assert answer.json()[0]["prediction"] in (0, 1)
            assert answer.headers["x-modelship-model"] == f"{MODEL}/{version}"
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    finally:
        mount = subprocess.run(
            [*BUILDAH, "mount", container], capture_output=True, text=True, check=False
        ).stdout.strip()
        stop_container(container)
    assert mount and not processes_rooted_at(mount), "a process from the image outlived the test"
