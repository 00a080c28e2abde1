"""The Bento's image assembled in a registry, as the package step does in a pod with no builder.

Against a real registry (distribution's docker-registry): a small base image is pushed with the
OCI client, a Bento folder is added as a layer, and the result is read back from the registry
(manifest under the tag, config, the layer's files) and pulled by digest by buildah into an
empty store, a client this project did not write.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from modelship.components.package import image as image_mod
from modelship.components.package import oci
from modelship.components.serving.bentostore import bento_digest
from modelship.core.errors import PackagingError
from tests.rehearsal import image_registry

needs_registry = pytest.mark.skipif(
    shutil.which("docker-registry") is None, reason="no docker-registry (make image-tools)"
)


def _fake_bento(root: Path, requirement: str = "requests") -> Path:
    bento = root / "bento"
    (bento / "src" / "bentos").mkdir(parents=True)
    (bento / "src" / "bentos" / "service.py").write_text("SERVICE = 1\n")
    (bento / "src" / "model").mkdir()
    (bento / "src" / "model" / "model.onnx").write_bytes(bytes(range(256)) * 64)
    (bento / "env" / "python").mkdir(parents=True)
    (bento / "env" / "python" / "requirements.txt").write_text(f"{requirement}\n")
    (bento / "bento.yaml").write_text("name: modelship-m\nlabels:\n  model: m\n  version: '3'\n")
    (bento / "src" / "__pycache__").mkdir()
    (bento / "src" / "__pycache__" / "x.pyc").write_bytes(b"written while serving")
    return bento


def _push_base(registry: str, repository: str, tmp: Path) -> str:
    """A one-layer base image (an OCI manifest) with a file and an environment; its ref."""
    files = tmp / "base-files"
    (files / "etc").mkdir(parents=True)
    (files / "etc" / "base-marker").write_text("base\n")
    layer = oci.folder_layer(files / "etc", "/etc", tmp / "base.tar.gz")
    config = json.dumps({
        "architecture": "amd64", "os": "linux",
        "config": {"Env": ["PATH=/opt/venv/bin:/usr/bin", "BENTOML_HOME=/wrong"],
                   "Cmd": ["modelship", "--help"], "Labels": {"base": "yes"}},
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id]},
    }).encode()  # fmt: skip
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": oci.OCI_MANIFEST,
        "config": {"mediaType": oci.OCI_CONFIG, "digest": oci.sha256(config), "size": len(config)},
        "layers": [{"mediaType": oci.OCI_LAYER, "digest": layer.digest, "size": layer.size}],
    }).encode()  # fmt: skip
    client = oci.Registry(registry)
    client.upload(repository, layer.digest, layer.path)
    client.upload(repository, oci.sha256(config), config)
    digest = client.put_manifest(repository, "1", manifest, oci.OCI_MANIFEST)
    return f"{registry}/{repository}@{digest}"


@pytest.fixture
def registries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    with (
        image_registry(tmp_path / "one") as one,
        image_registry(tmp_path / "two") as two,
    ):
        conf = tmp_path / "registries.conf"
        conf.write_text(
            (tmp_path / "one" / "registries.conf").read_text()
            + (tmp_path / "two" / "registries.conf").read_text()
        )
        monkeypatch.setenv("CONTAINERS_REGISTRIES_CONF", str(conf))
        yield one, two


def _layer_files(client: oci.Registry, repository: str, digest: str, out: Path) -> Path:
    with tarfile.open(fileobj=io.BytesIO(client.blob(repository, digest)), mode="r:gz") as tar:
        tar.extractall(out, filter="data")
    return out


@needs_registry
def test_the_bento_is_added_on_the_pipeline_image_and_reads_back_byte_for_byte(
    registries: tuple[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    one, _ = registries
    base = _push_base(one, "platform/modelship", tmp_path)
    monkeypatch.setenv(image_mod.PIPELINE_IMAGE_ENV, base)
    bento = _fake_bento(tmp_path)
    builder = image_mod.Layered()
    assert builder.available() is None
    log = tmp_path / "work" / "image.log"
    log.parent.mkdir()
    built = builder.build(bento, "modelship-m:v3-abc", log)
    again = image_mod.Layered().build(bento, "modelship-m:v3-abc", tmp_path / "image2.log")
    assert built.image_id == again.image_id  # the same files always make the same layer
    digest = builder.push(built, f"{one}/models/modelship-m:v3-abc", log)
    assert "mounted" in log.read_text()  # the base's layer is linked, not copied, in one registry

    client = oci.Registry(one)
    body, media_type, said = client.manifest(
        oci.Reference.parse(f"{one}/models/modelship-m:v3-abc")
    )
    assert said == digest and media_type == oci.OCI_MANIFEST
    manifest = json.loads(body)
    config = json.loads(client.blob("models/modelship-m", manifest["config"]["digest"]))
    run = config["config"]
    assert run["Cmd"][:3] == ["bentoml", "serve", "bentos.service:ModelService"]
    assert run["WorkingDir"] == "/home/bentoml/bento/src"
    env = dict(e.split("=", 1) for e in run["Env"])
    assert env["PATH"] == "/opt/venv/bin:/usr/bin" and env["BENTOML_HOME"] == "/home/bentoml"
    assert run["Labels"]["model"] == "m" and run["Labels"]["base"] == "yes"
    assert run["Labels"]["org.opencontainers.image.base.digest"] == base.split("@")[1]
    assert len(config["rootfs"]["diff_ids"]) == len(manifest["layers"]) == 2
    files = _layer_files(client, "models/modelship-m", manifest["layers"][-1]["digest"],
                         tmp_path / "unpacked")  # fmt: skip
    served = files / "home" / "bentoml" / "bento"
    assert bento_digest(served) == bento_digest(bento)  # byte for byte what was packaged
    assert run["Labels"][image_mod.BENTO_DIGEST_LABEL] == bento_digest(bento)
    assert not (served / "src" / "__pycache__").exists()
    assert (files / "var" / "lib" / "modelship").is_dir()

    if shutil.which("buildah"):  # a client this project did not write pulls it by digest
        store = tmp_path / "store"
        pulled = subprocess.run(
            ["buildah", "--root", str(store / "root"), "--runroot", str(store / "run"),
             "--storage-driver", "vfs", "pull", "--quiet",
             f"{one}/models/modelship-m@{digest}"],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert pulled.returncode == 0, pulled.stderr


@needs_registry
def test_a_base_in_another_registry_is_copied_and_a_missing_package_is_named(
    registries: tuple[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    one, two = registries
    monkeypatch.setenv(
        image_mod.PIPELINE_IMAGE_ENV, _push_base(one, "platform/modelship", tmp_path)
    )
    builder = image_mod.Layered()
    log = tmp_path / "image.log"
    built = builder.build(_fake_bento(tmp_path), "modelship-m:v3-abc", log)
    digest = builder.push(built, f"{two}/models/modelship-m:v3-abc", log)
    assert "copied" in log.read_text()
    _, _, said = oci.Registry(two).manifest(
        oci.Reference.parse(f"{two}/models/modelship-m@{digest}")
    )
    assert said == digest

    with pytest.raises(PackagingError) as bad:
        builder.build(_fake_bento(tmp_path / "b", "not-a-package-here==1.0"), "x:y", log)
    assert "not-a-package-here==1.0: not installed" in bad.value.message
    assert "make pipeline-image" in (bad.value.hint or "")


def test_the_layered_builder_says_why_it_cannot_work(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(image_mod.PIPELINE_IMAGE_ENV, raising=False)
    assert "is not set" in str(image_mod.Layered().available())
    monkeypatch.setenv(image_mod.PIPELINE_IMAGE_ENV, "localhost/modelship:0.1.0")
    assert "not in a registry" in str(image_mod.Layered().available())
    monkeypatch.setenv(image_mod.PIPELINE_IMAGE_ENV, "ghcr.io/acme/modelship@sha256:" + "a" * 64)
    monkeypatch.setattr(image_mod, "BUILDERS", {"layered": image_mod.Layered})
    builder, why_not = image_mod.pick_builder("")
    assert builder is None and "needs package.registry" in why_not[0]
    assert image_mod.pick_builder("ghcr.io/acme/models")[0] is not None
