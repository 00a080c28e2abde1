"""The package stage: a Bento of the optimized model and, where a builder exists, its image.

Demands a passing optimize verdict. Checks the model's digest again before anything is copied,
builds the Bento with ``bentoml build``, checks that the files inside it are the ones it was
given, then builds an OCI image (``package.image``: auto, always, never). Writes
``package.json`` (Bento tag, path, image) for the load-test stage and records the same on the
model version and in the deployment run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

from modelship.bentos.model import ModelFilesChanged, verify_files
from modelship.components.contract import ModelInputs, Stage, StageContext
from modelship.components.mlmodel import read_mlmodel, read_signature
from modelship.components.package import bento as bento_build
from modelship.components.package.image import (
    BUILDERS,
    Image,
    image_ref,
    pick_builder,
    pushed_ref,
)
from modelship.components.serving import triton
from modelship.components.serving.bentostore import bento_digest, export_bento
from modelship.components.targets.cluster import Deployable
from modelship.components.targets.seldon import OBJECT_STORAGE
from modelship.components.targets.seldon import model_name as seldon_model_name
from modelship.core.errors import PackagingError
from modelship.core.events import EventSink
from modelship.core.records import OptimizeRecord, PackageRecord
from modelship.core.tags import (
    RUN_BENTO_DIGEST,
    TAG_BENTO,
    TAG_BENTO_DIGEST,
    TAG_BENTO_URI,
    TAG_IMAGE,
    TAG_TRITON_DIGEST,
    TAG_TRITON_URI,
)
from modelship.core.verdict import Check, ModelState, Verdict
from modelship.registry.deployments import DeploymentRun

NAME = "package"


def _columns(record: OptimizeRecord, model_dir: Path) -> list[str]:
    if record.columns:
        return list(record.columns)
    return [c for c, _ in read_signature(read_mlmodel(model_dir)).columns]


def _push_check(
    image: Image, registry: str, built: bento_build.BuiltBento, workdir: Path, events: EventSink
) -> tuple[Check, Image]:
    """Push the image to the policy's registry; the image as a cluster pulls it, by digest."""
    builder = BUILDERS[image.builder]()
    target = f"{registry}/{built.name}:{built.version}"
    events.emit(NAME, "step", step=f"push {target}")
    try:
        digest = builder.push(image, target, workdir / "image-push.log")
    except PackagingError as e:
        return Check(name="package.image.push", kind="image", passed=False, reason=e.message,
                     threshold=registry), image  # fmt: skip
    ref = pushed_ref(target, digest)
    return Check(name="package.image.push", kind="image", passed=True, measured=ref,
                 reason=f"pushed to {ref}"), replace(image, ref=ref)  # fmt: skip


def _image_check(
    built: bento_build.BuiltBento, mode: str, registry: str, workdir: Path, events: EventSink
) -> tuple[Check, Image | None]:
    if mode == "never":
        return Check(name="package.image", kind="image", passed=True, skipped=True,
                     reason="image: skipped (package.image is never)"), None  # fmt: skip
    builder, why_not = pick_builder(registry)
    if builder is None:
        reason = f"image: skipped (no builder: {'; '.join(why_not)})"
        if mode == "always":
            return Check(name="package.image", kind="image", passed=False,
                         reason=reason.replace("skipped", "required by the policy but")), None  # fmt: skip
        return Check(name="package.image", kind="image", passed=True, skipped=True,
                     blocking=False, reason=reason), None  # fmt: skip
    events.emit(NAME, "step", step=f"image with {builder.name} (minutes the first time)")
    log = workdir / "image-build.log"
    image = builder.build(built.path, image_ref(built.name, built.version), log)
    return Check(name="package.image", kind="image", passed=True, measured=image.ref,
                 reason=f"{image.ref} built with {image.builder} ({image.size})"), image  # fmt: skip


def _triton_check(
    onnx_file: Path, name: str, model_digest: str, deployment: DeploymentRun, workdir: Path
) -> tuple[Check, str, str]:
    """Upload the ONNX model in Triton's layout into the deployment run, for Seldon's Triton
    server; the check, its storage URI and the digest of its ``1/model.onnx``."""
    files = triton.write_repository(onnx_file, name, workdir / "triton")
    onnx_digest = files[f"1/{triton.ONNX_FILE}"]
    if model_digest and onnx_digest != model_digest:
        return Check(name="package.triton", kind="bento", passed=False,
                     reason=f"model.onnx is {onnx_digest}, not the {model_digest} that passed "
                     "the gates"), "", ""  # fmt: skip
    uri = deployment.log_folder(workdir / "triton" / name, f"triton/{name}")
    if not uri.startswith(OBJECT_STORAGE):
        return Check(
            name="package.triton", kind="bento", passed=False, measured=uri,
            reason=f"the Triton model lies at {uri}, which Seldon's servers cannot fetch "
            "(they read object storage: s3://, gs://, az://); run the MLflow server with "
            "--default-artifact-root s3://BUCKET/PATH --no-serve-artifacts",
        ), "", ""  # fmt: skip
    return Check(name="package.triton", kind="bento", passed=True, measured=uri,
                 reason=f"ONNX model in Triton's layout at {uri} ({onnx_digest[:19]})"), uri, onnx_digest  # fmt: skip


@dataclass(frozen=True)
class PackageInputs(ModelInputs):
    #: the optimize step's output: ``model.onnx`` and its :class:`OptimizeRecord`
    optimized: Path
    #: where the :class:`PackageRecord` goes
    out_dir: Path


def run(ctx: StageContext, inputs: PackageInputs) -> Verdict:
    """Package ``ctx.ref``; write its :class:`PackageRecord` to ``inputs.out_dir``."""
    ref, registry, workdir, events, policy = (
        ctx.ref, ctx.registry, ctx.workdir, ctx.events, ctx.policy
    )  # fmt: skip
    model_dir, digest, optimized, out_dir = (
        inputs.model_dir, inputs.digest, inputs.optimized, inputs.out_dir
    )  # fmt: skip
    bentoml_home = ctx.settings.bentoml_home
    record = OptimizeRecord.load(optimized)
    workdir.mkdir(parents=True, exist_ok=True)
    context = workdir / "bento-context"
    files, packages = bento_build.assemble(context, optimized, model_dir, record)
    config = bento_build.serving_config(
        ref.name, ref.version, digest, record, _columns(record, model_dir), policy.package, files
    )
    events.emit(NAME, "step", step=f"bentoml build ({config.variant})")
    built = bento_build.build(
        context, config, packages, bentoml_home=bentoml_home, log=workdir / "bento-build.log",
        labels={"model": ref.name, "version": ref.version, "digest": digest.removeprefix("sha256:")[:12],
                "variant": config.variant, "owner": "modelship"},
    )  # fmt: skip
    checks = [Check(name="package.bento", kind="bento", passed=True, measured=built.tag,
                    reason=f"{built.tag} built from {config.variant}")]  # fmt: skip
    try:
        verify_files(built.path / "src" / "model", files)
        checks.append(Check(name="package.bento.files", kind="bento", passed=True,
                            reason=f"{len(files)} model file(s) in the Bento match their digests"))  # fmt: skip
    except ModelFilesChanged as e:
        checks.append(Check(name="package.bento.files", kind="bento", passed=False, reason=str(e)))
    digest_of_bento = bento_digest(built.path)
    bento_uri: str | None = None
    if (deployment := ctx.deployment) is not None:
        # later steps may run in other pods: they fetch the Bento from here, by this digest
        events.emit(NAME, "step", step=f"bentoml export {built.tag} into MLflow")
        try:
            bento_uri = export_bento(built.tag, bentoml_home, deployment, workdir)
            checks.append(Check(name="package.bento.export", kind="bento", passed=True,
                                measured=bento_uri, reason=f"exported to {bento_uri}"))  # fmt: skip
        except PackagingError as e:
            checks.append(Check(name="package.bento.export", kind="bento", passed=False,
                                reason=e.message))  # fmt: skip
    triton_uri = triton_digest = ""
    if deployment is not None and policy.rollout.target == "seldon" and config.variant != "native":
        events.emit(NAME, "step", step="ONNX model in Triton's layout, for Seldon")
        triton_check, triton_uri, triton_digest = _triton_check(
            optimized / triton.ONNX_FILE, seldon_model_name(Deployable(ref.name, ref.version)),
            f"sha256:{files[triton.ONNX_FILE]}" if triton.ONNX_FILE in files else "",
            deployment, workdir,
        )  # fmt: skip
        checks.append(triton_check)
    image: Image | None = None
    try:
        image_check, image = _image_check(
            built, policy.package.image, policy.package.registry, workdir, events
        )
    except PackagingError as e:
        image_check = Check(name="package.image", kind="image", passed=False, reason=e.message)
    checks.append(image_check)
    if image is not None and policy.package.registry:
        push_check, image = _push_check(image, policy.package.registry, built, workdir, events)
        checks.append(push_check)
    out = PackageRecord(
        version=ref.version,
        bento=built.tag,
        bento_path=str(built.path),
        bento_digest=digest_of_bento,
        bentoml_home=str(bentoml_home),
        bento_uri=bento_uri,
        serving=json.loads(built.config.model_dump_json()),
        image=image.ref if image else None,
        image_id=image.image_id if image else None,
        image_builder=image.builder if image else None,
        image_status=image_check.reason,
    )
    out.save(out_dir)
    verdict = Verdict.from_checks(NAME, checks)
    if verdict.passed:
        registry.set_tag(ref, TAG_BENTO, built.tag)
        registry.set_tag(ref, TAG_BENTO_DIGEST, digest_of_bento)
        if bento_uri:
            registry.set_tag(ref, TAG_BENTO_URI, bento_uri)
        if image is not None:
            registry.set_tag(ref, TAG_IMAGE, image.ref)
        if triton_uri:
            registry.set_tag(ref, TAG_TRITON_URI, triton_uri)
            registry.set_tag(ref, TAG_TRITON_DIGEST, triton_digest)
    if deployment is not None:
        deployment.log_text(out.model_dump_json(indent=2), "package/package.json")
        deployment.log_text((context / "bentofile.yaml").read_text(), "package/bentofile.yaml")
        deployment.set_tags({TAG_BENTO: built.tag, RUN_BENTO_DIGEST: out.bento_digest,
                             TAG_IMAGE: out.image or ""})  # fmt: skip
    return verdict


STAGE: Stage[PackageInputs] = Stage(NAME, ModelState.PACKAGED, run)
