"""The last step: the deployment's outcome from the stages' verdicts, recorded once."""

from __future__ import annotations

from typing import Any

from modelship.core.verdict import Verdict
from modelship.registry.client import ModelRef
from modelship.registry.deployments import DeploymentRun


def summarize(ref: ModelRef, digest: str, run_id: str, verdicts: list[Verdict]) -> dict[str, Any]:
    rejected = next((v for v in verdicts if not v.passed and not v.skipped), None)
    return {
        "model": ref.name,
        "version": ref.version,
        "digest": digest,
        "run_id": run_id,
        "outcome": "rejected" if rejected else "passed",
        "rejected_at": rejected.stage if rejected else None,
        "reason": rejected.reason if rejected else "all gates passed",
        "stages": [
            {
                "name": v.stage,
                "passed": v.passed,
                "skipped": v.skipped,
                "reason": v.reason,
                "duration_s": v.duration_s,
                "figures": v.figures,
                "checks": [c.model_dump() for c in v.checks],
            }
            for v in verdicts
        ],
    }


def run(
    ref: ModelRef, digest: str, deployment: DeploymentRun, verdicts: list[Verdict]
) -> dict[str, Any]:
    summary = summarize(ref, digest, deployment.run_id, verdicts)
    deployment.finish(passed=summary["outcome"] == "passed", summary=summary)
    return summary
