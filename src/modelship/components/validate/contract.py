"""The data contract, checked with Great Expectations on the validation data.

Expectations come from three places: the model's MLflow signature (columns and types), the
policy (nulls, explicit per-column rules) and the reference data (value ranges at configurable
quantiles, widened by a margin). The Great Expectations result is kept as JSON and as its own
HTML rendering for the deployment run.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import pandas as pd

from modelship.core.verdict import Check
from modelship.policies.schema import DataContract

#: MLflow column types and the pandas dtypes that satisfy them. Integers are accepted where the
#: signature says floating point: MLflow converts them on input without loss.
_DTYPES: dict[str, list[str]] = {
    "double": ["float64", "float32", "int64", "int32"],
    "float": ["float32", "float64", "int64", "int32"],
    "long": ["int64", "int32"],
    "integer": ["int32", "int64"],
    "boolean": ["bool"],
    "string": ["object", "str"],
    "datetime": ["datetime64"],
    "binary": ["object"],
}

_counter = itertools.count()


@dataclass(frozen=True)
class ColumnSpec:
    name: str
    mlflow_type: str | None
    nullable: bool
    low: float | None
    high: float | None
    mostly: float
    range_source: str  # "reference", "policy" or ""


@dataclass(frozen=True)
class ContractResult:
    checks: list[Check]
    ge_json: dict[str, Any]
    ge_html: str
    specs: list[ColumnSpec]


def learn_specs(
    columns: list[tuple[str, str | None]], reference: pd.DataFrame | None, contract: DataContract
) -> list[ColumnSpec]:
    """What each input column must look like: signature type, nulls, range."""
    specs = []
    ranges = contract.ranges
    for name, mlflow_type in columns:
        rule = contract.columns.get(name)
        nullable = contract.allow_nulls
        low = high = None
        source = ""
        mostly = ranges.mostly
        numeric_type = mlflow_type in ("double", "float", "long", "integer")
        if (
            ranges.enabled
            and reference is not None
            and name in reference.columns
            and (numeric_type or pd.api.types.is_numeric_dtype(reference[name]))
            and not pd.api.types.is_bool_dtype(reference[name])
        ):
            values = pd.to_numeric(reference[name], errors="coerce").dropna()
            if len(values):
                q_low, q_high = values.quantile(list(ranges.quantiles)).tolist()
                margin = (q_high - q_low) * ranges.widen
                low, high, source = q_low - margin, q_high + margin, "reference"
        if rule is not None:
            if rule.allow_null is not None:
                nullable = rule.allow_null
            if rule.min is not None or rule.max is not None:
                low, high, source, mostly = rule.min, rule.max, "policy", rule.mostly
        specs.append(ColumnSpec(name, mlflow_type, nullable, low, high, mostly, source))
    return specs


def _suite(specs: list[ColumnSpec], target: str) -> Any:
    import great_expectations as gx
    import great_expectations.expectations as gxe

    expectations: list[Any] = [gxe.ExpectColumnToExist(column=target)]
    for s in specs:
        expectations.append(gxe.ExpectColumnToExist(column=s.name))
        if s.mlflow_type in _DTYPES:
            expectations.append(
                gxe.ExpectColumnValuesToBeInTypeList(
                    column=s.name, type_list=_DTYPES[s.mlflow_type]
                )
            )
        if not s.nullable:
            expectations.append(gxe.ExpectColumnValuesToNotBeNull(column=s.name))
        if s.low is not None or s.high is not None:
            expectations.append(
                gxe.ExpectColumnValuesToBeBetween(
                    column=s.name, min_value=s.low, max_value=s.high, mostly=s.mostly
                )
            )
    # given whole, not by add_expectation: that compares each one with every one before it
    # (quadratic: half a second for 30 columns), to drop duplicates these cannot have
    return gx.ExpectationSuite(name="modelship-data-contract", expectations=expectations)


def _run_ge(frame: pd.DataFrame, specs: list[ColumnSpec], target: str) -> Any:
    import great_expectations as gx

    ctx = gx.get_context(mode="ephemeral")  # GE wants its context before a suite is built
    # GE's tqdm bars would interleave with modelship's own progress display
    ctx.variables.progress_bars = {"globally": False, "metric_calculations": False}
    suite = _suite(specs, target)
    name = f"validation-{next(_counter)}"
    batch = (
        ctx.data_sources.add_pandas(name)
        .add_dataframe_asset("validation")
        .add_batch_definition_whole_dataframe("all")
        .get_batch(batch_parameters={"dataframe": frame})
    )
    return batch.validate(suite, result_format="SUMMARY")


def _ge_error(evr: Any) -> str | None:
    """GE reports evaluation errors flat for some expectations, nested by metric for others."""
    info = evr.exception_info or {}
    for candidate in [info, *(v for v in info.values() if isinstance(v, dict))]:
        if candidate.get("raised_exception"):
            return str(candidate.get("exception_message"))
    return None


_SHORT = {
    "expect_column_to_exist": "exists",
    "expect_column_values_to_be_in_type_list": "type",
    "expect_column_values_to_not_be_null": "not_null",
    "expect_column_values_to_be_between": "range",
}


def _check_from(evr: Any, specs: dict[str, ColumnSpec], present: set[str]) -> Check:
    config = evr.expectation_config
    kind = config.type
    column = config.kwargs.get("column")
    result = evr.result or {}
    label = f"data.{column}.{_SHORT.get(kind, kind)}"
    error = _ge_error(evr)
    if evr.success:
        return Check(name=label, kind="data", passed=True, reason="ok")
    if kind == "expect_column_to_exist":
        return Check(
            name=label,
            kind="data",
            passed=False,
            measured="missing",
            reason=f"column {column!r} is missing from the validation data",
        )
    if column not in present:  # GE's own message for this differs between expectations
        return Check(
            name=label,
            kind="data",
            passed=False,
            measured="missing",
            reason=f"column {column!r} is missing, so this could not be checked",
        )
    if kind == "expect_column_values_to_be_in_type_list":
        observed = result.get("observed_value")
        if observed:
            what = f"has type {observed}"
        else:  # object columns are checked row by row
            what = f"has {result.get('unexpected_count')} values that are not numbers of that type"
        return Check(
            name=label,
            kind="data",
            passed=False,
            measured=str(observed or result.get("unexpected_count")),
            threshold=" | ".join(config.kwargs["type_list"]),
            reason=f"column {column!r} {what}; the model's signature needs "
            f"{specs[column].mlflow_type}",
        )
    if kind == "expect_column_values_to_not_be_null":
        count = result.get("unexpected_count")
        return Check(
            name=label,
            kind="data",
            passed=False,
            measured=count,
            threshold=0,
            reason=f"column {column!r} has {count} null values",
        )
    if kind == "expect_column_values_to_be_between":
        spec = specs[column]
        if error:
            return Check(
                name=label,
                kind="data",
                passed=False,
                reason=f"range of {column!r} could not be checked: {error}",
            )
        share = (result.get("unexpected_percent") or 0.0) / 100
        return Check(
            name=label,
            kind="data",
            passed=False,
            measured=round(share, 4),
            threshold=f"<= {1 - spec.mostly:.4g} outside [{spec.low:.4g}, {spec.high:.4g}]"
            if spec.low is not None and spec.high is not None
            else f"mostly {spec.mostly}",
            reason=f"{share:.1%} of {column!r} lies outside the range "
            + (
                "set in the policy"
                if spec.range_source == "policy"
                else "learned from the reference data"
            )
            + f" (examples: {result.get('partial_unexpected_list', [])[:3]})",
        )
    return Check(name=label, kind="data", passed=False, reason=error or f"{kind} failed")


def check_contract(
    validation: pd.DataFrame,
    columns: list[tuple[str, str | None]],
    target: str,
    reference: pd.DataFrame | None,
    contract: DataContract,
) -> ContractResult:
    """Run the contract on the validation data; one check per expectation."""
    from great_expectations.render.renderer import ValidationResultsPageRenderer
    from great_expectations.render.view import DefaultJinjaPageView

    specs = learn_specs(columns, reference, contract)
    result = _run_ge(validation, specs, target)
    by_name = {s.name: s for s in specs}
    present = set(map(str, validation.columns))
    checks = [_check_from(evr, by_name, present) for evr in result.results]
    # failures first, then in column order, so the person reading sees the cause at the top
    checks.sort(key=lambda c: (c.passed, c.name))
    html = DefaultJinjaPageView().render(ValidationResultsPageRenderer().render(result))
    return ContractResult(checks, result.to_json_dict(), html, specs)
