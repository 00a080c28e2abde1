"""A custom object checked against its CRD's schema, as the API server checks it, before it is sent.

The schema is the cluster's own (``spec.versions[].schema.openAPIV3Schema`` of the installed
CRD, read from the API server), so the check follows whatever version of Seldon Core v2 or
KServe is installed. Unknown fields are refused where a schema lists its fields: the API server
would drop them silently, and since Kubernetes 1.27 ``kubectl`` asks it to refuse them
(``--validate=strict``); a misspelt ``canaryTrafficPercentage`` must not pass here and do
nothing there. The tests' API stand-in validates with the same rules.
"""

from __future__ import annotations

from typing import Any


def strict(schema: Any) -> Any:
    """``schema`` with ``additionalProperties: false`` wherever it lists its properties and
    does not keep unknown fields on purpose (``x-kubernetes-preserve-unknown-fields``)."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) for k, v in schema.items()}
    keeps_unknown = out.get("x-kubernetes-preserve-unknown-fields")
    if "properties" in out and "additionalProperties" not in out and not keeps_unknown:
        out["additionalProperties"] = False
    return out


def served_schema(crd: dict[str, Any], version: str) -> dict[str, Any] | None:
    """The object schema a CRD serves for ``version``; None where it serves no such version."""
    for served in (crd.get("spec") or {}).get("versions") or []:
        if served.get("name") == version:
            schema = (served.get("schema") or {}).get("openAPIV3Schema")
            return schema if isinstance(schema, dict) else None
    return None


class CrdSchema:
    """One served version's object schema, made strict once, checking manifests."""

    def __init__(self, schema: dict[str, Any]) -> None:
        import jsonschema  # type: ignore[import-untyped]

        # OpenAPI v3.0 schemas follow JSON Schema draft 4 (boolean exclusiveMinimum and the like)
        self.validator = jsonschema.Draft4Validator(strict(schema))

    def errors(self, manifest: dict[str, Any]) -> list[str]:
        """What the schema refuses in ``manifest`` (``path: message`` each); empty if nothing."""
        found = sorted(self.validator.iter_errors(manifest),
                       key=lambda e: [str(p) for p in e.absolute_path])  # fmt: skip
        return [f"{'.'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message}"
                for e in found]  # fmt: skip
