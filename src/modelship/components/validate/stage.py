"""The validation gate: data contract, model checks and metric gate, in one verdict.

Plain Python with typed inputs; the KFP component in :mod:`pipelines.deploy` only unpacks its
inputs and calls :func:`run`. Tests call :func:`run` directly.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from modelship.components import metrics
from modelship.components.contract import ModelInputs, Stage, StageContext
from modelship.components.datasource import read_frame
from modelship.components.mlmodel import (
    artifact_checks,
    model_inputs,
    read_mlmodel,
    read_signature,
)
from modelship.components.validate.contract import check_contract
from modelship.components.validate.model_check import Probe, behaviour_checks
from modelship.core.errors import DataError
from modelship.core.verdict import Check, ModelState, Verdict
from modelship.policies.schema import Validate

NAME = "validate"


@dataclass(frozen=True)
class Evaluation:
    """One model's metric values on the validation data, or why there are none."""

    values: dict[str, float]
    checks: list[Check]


class _Scoring:
    """One model scored on the validation rows: its probe starts at once, read when needed.

    Candidate and champion load in their own processes while the data contract is checked.
    """

    def __init__(
        self,
        label: str,
        model_dir: Path,
        validation: pd.DataFrame,
        target: str,
        policy: Validate,
        workdir: Path,
        env: dict[str, str],
    ) -> None:
        mlmodel = read_mlmodel(model_dir)
        self.signature = read_signature(mlmodel)
        self.validation, self.target, self.policy = validation, target, policy
        self.checks = artifact_checks(model_dir, mlmodel, policy.model)
        missing = [n for n, _ in self.signature.columns if n not in validation.columns]
        if missing:
            self.checks.append(
                Check(
                    name="model.predicts",
                    kind="model",
                    passed=False,
                    measured=f"{len(missing)} missing",
                    reason="not run: the validation data lacks the model's input columns "
                    f"{missing[:5]}",
                )
            )
        self.probe: Probe | None = None
        if all(c.passed for c in self.checks):  # nothing is loaded that failed these checks
            features = model_inputs(validation, self.signature, target)
            self.probe = Probe(
                model_dir, features, workdir / label, policy.model.load_timeout_s, env
            )

    def finish(self) -> Evaluation:
        if self.probe is None:
            return Evaluation({}, self.checks)
        result = self.probe.result()
        checks = self.checks + behaviour_checks(result, len(self.validation), self.signature)
        if result.predictions is None or not all(c.passed for c in checks):
            return Evaluation({}, checks)
        y_true = self.validation[self.target].to_numpy()
        values = {
            str(g.name): metrics.compute(
                g.name, y_true, result.predictions, self.policy.positive_label
            )
            for g in self.policy.metrics
        }
        return Evaluation(values, checks)

    def cancel(self) -> None:
        if self.probe is not None:
            self.probe.cancel()


def run(ctx: StageContext, inputs: ModelInputs) -> Verdict:
    """Validate ``ctx.ref`` (its digest-checked copy in ``inputs.model_dir``) against the policy."""
    ref, registry, workdir, events = ctx.ref, ctx.registry, ctx.workdir, ctx.events
    policy, model_dir, env = ctx.policy.validate_stage, inputs.model_dir, ctx.env
    context = {"run_id": ref.run_id or "", "model": ref.name, "version": ref.version}
    validation = read_frame(policy.validation_data.uri, policy.validation_data.format, context)
    reference = read_frame(policy.reference_data.uri, policy.reference_data.format, context)
    target = policy.validation_data.target
    if target not in validation.columns:
        raise DataError(
            f"validation data has no target column {target!r} (columns: {list(validation.columns)[:8]}...)",
            hint="set validate.validation_data.target in the policy",
        )
    signature = read_signature(read_mlmodel(model_dir))  # an MLmodel file, or a clear error

    candidate = _Scoring("candidate", model_dir, validation, target, policy, workdir, env)
    champ = registry.champion(ref.name)
    champion: _Scoring | None = None
    try:  # from here on, a probe is never left running, whatever goes wrong
        if champ is not None and champ.version != ref.version:
            champ_dir, _ = registry.checked_download(champ, workdir / "champion-model")
            champion = _Scoring("champion", champ_dir, validation, target, policy, workdir, env)
        events.emit(NAME, "step", step="data contract (Great Expectations)")
        contract = check_contract(validation, signature.columns, target, reference, policy.contract)
        checks = list(contract.checks)
        reports = workdir / "reports"
        reports.mkdir(parents=True, exist_ok=True)
        (reports / "data_contract.json").write_text(
            json.dumps(contract.ge_json, indent=2, default=str)
        )
        (reports / "data_contract.html").write_text(contract.ge_html)
        events.emit(NAME, "step", step=f"model checks: {ref}")
        scored = candidate.finish()
        checks += scored.checks
        figures: dict[str, float] = {"rows": float(len(validation)), **scored.values}
        champion_values = None
        if scored.values and champion is not None:
            events.emit(NAME, "step", step=f"champion on the same data: {champ}")
            evaluation = champion.finish()
            if evaluation.values:
                champion_values = evaluation.values
                figures.update({f"champion.{k}": v for k, v in evaluation.values.items()})
            else:
                failed = "; ".join(c.reason for c in evaluation.checks if not c.passed)
                checks.append(
                    Check(
                        name="champion.evaluates",
                        kind="metric",
                        passed=False,
                        measured=str(champ),
                        reason=f"the champion {champ} could not be evaluated, so no comparison: {failed}",
                    )
                )
    finally:
        candidate.cancel()
        if champion is not None:
            champion.cancel()
    if scored.values or (scored.checks and all(c.passed for c in scored.checks)):
        events.emit(NAME, "step", step="metric gate")
        checks += metrics.gate(policy.metrics, scored.values, champion_values)
        if not policy.metrics:
            checks.append(
                Check(
                    name="metric.gates",
                    kind="metric",
                    passed=True,
                    skipped=True,
                    reason="the policy sets no metric gates",
                )
            )
    verdict = Verdict.from_checks(NAME, checks, figures=figures)
    verdict.save(reports / "validate.json")
    if ctx.deployment is not None:
        ctx.deployment.log_file(reports / "data_contract.json", "validate")
        ctx.deployment.log_file(reports / "data_contract.html", "validate")
    return verdict


STAGE: Stage[ModelInputs] = Stage(NAME, ModelState.VALIDATED, run)
