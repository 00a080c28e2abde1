"""A packaged version as later steps find it: its Bento and image, and requests to send it."""

from __future__ import annotations

import json

from modelship.components.datasource import read_frame
from modelship.core.records import PackagedModel
from modelship.core.tags import TAG_BENTO, TAG_BENTO_DIGEST, TAG_BENTO_URI, TAG_IMAGE
from modelship.policies.schema import Policy
from modelship.registry.client import ModelRef, Registry

MAX_BODIES = 1000


def bodies(policy: Policy, ref: ModelRef, columns: list[str]) -> list[bytes]:
    """One-row request bodies (records) drawn from the validation data, in file order."""
    data = policy.validate_stage.validation_data
    context = {"run_id": ref.run_id or "", "model": ref.name, "version": ref.version}
    frame = read_frame(data.uri, data.format, context)
    rows = frame[columns].head(MAX_BODIES).to_dict(orient="records")
    return [json.dumps({"inputs": [row]}).encode() for row in rows]


def packaged_version(registry: Registry, ref: ModelRef) -> tuple[PackagedModel | None, str]:
    """A version's Bento and image from its tags, or why it has none."""
    tags = registry.client.get_model_version(ref.name, ref.version).tags
    tag = tags.get(TAG_BENTO)
    if not tag:
        return None, f"v{ref.version} was never packaged (no {TAG_BENTO} tag)"
    return PackagedModel(
        version=ref.version, bento=tag, image=tags.get(TAG_IMAGE) or None,
        bento_uri=tags.get(TAG_BENTO_URI) or None, bento_digest=tags.get(TAG_BENTO_DIGEST) or None,
    ), ""  # fmt: skip


def champion_package(registry: Registry, ref: ModelRef) -> tuple[PackagedModel | None, str]:
    """The champion's package, or why there is none to compare ``ref`` with."""
    champion = registry.champion(ref.name)
    if champion is None:
        return None, "no champion yet"
    if champion.version == ref.version:
        return None, "this version is the champion"
    packaged, why_not = packaged_version(registry, champion)
    return packaged, why_not.replace(f"v{champion.version}", f"champion v{champion.version}", 1)
