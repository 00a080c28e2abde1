"""One exact variant through the equivalence gate: loaded, run on the validation rows, compared.

Used by the stage for every variant it builds, and by ``benchmarks/gpu.py`` for the GPU variants
on a machine with no MLflow: it needs only the variant's file, what the native model said about
the validation rows, and the policy. A session that did not get the execution provider its
variant is for (ONNX Runtime falls back to the next provider in the list, with a warning only)
is dropped with the reason: it would be timed, and perhaps chosen, on the wrong hardware.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from modelship.components.optimize import equivalence
from modelship.components.optimize.convert import INPUT_NAME, NativeOutputs
from modelship.components.optimize.variants import SessionSettings, VariantFile, open_session
from modelship.core.verdict import Check
from modelship.policies.schema import Policy


def _check(name: str, what: str, reason: str, *, skipped: bool = False) -> Check:
    return Check(name=f"variant.{name}.{what}", kind="equivalence", passed=skipped,
                 skipped=skipped, blocking=False, reason=reason)  # fmt: skip


def try_variant(
    vf: VariantFile, native: NativeOutputs, x: NDArray[np.float32], y_true: NDArray[Any],
    policy: Policy, settings: SessionSettings,
) -> tuple[list[Check], Any]:  # fmt: skip
    """Checks for one variant, and its session when it passed them all."""
    name = str(vf.variant)
    if vf.skipped:
        return [_check(name, "builds", f"skipped: {vf.skipped}", skipped=True)], None
    if vf.error or vf.path is None:
        return [_check(name, "builds", f"could not be built: {vf.error}")], None
    try:
        session = open_session(vf, settings)
        wanted, got = vf.providers[0], session.get_providers()
        if wanted not in got:
            reason = f"skipped: {wanted} could not be loaded; the session got {', '.join(got)}"
            return [_check(name, "provider", reason, skipped=True)], None
        outputs = session.run(None, {INPUT_NAME: x})
    except Exception as e:  # a corrupt or unsupported graph: drop this variant, keep the others
        reason = f"failed to load or run: {type(e).__name__}: {e}"
        return [_check(name, "loads", reason)], None
    found = equivalence.from_onnx(outputs, native)
    checks = equivalence.compare(name, native, found, policy.optimize.equivalence)
    checks += equivalence.metric_budget(
        name, policy.validate_stage.metrics, y_true, native, found,
        policy.optimize.metric_budget, policy.validate_stage.positive_label,
    )  # fmt: skip
    return checks, session if all(c.passed for c in checks) else None
