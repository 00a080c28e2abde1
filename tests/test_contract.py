"""The data contract, run with Great Expectations on small generated frames.

Great Expectations takes seconds to import and builds a context per run, so the frames and the
clean run are module-scoped and each test runs the contract once at most.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from modelship.components.validate.contract import ContractResult, check_contract, learn_specs
from modelship.core.verdict import Check
from modelship.policies.schema import ColumnRule, DataContract, RangeRule

ROWS = 200
COLUMNS: list[tuple[str, str | None]] = [("a", "double"), ("b", "double"), ("c", "double")]
TARGET = "target"
#: pinned rather than the policy's defaults, so that tuning those does not move these tests
RANGES = RangeRule(quantiles=(0.001, 0.999), widen=0.25, mostly=0.98)


def frame(seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "a": rng.normal(0.0, 1.0, ROWS),
            "b": rng.normal(5.0, 2.0, ROWS),
            "c": rng.uniform(0.0, 10.0, ROWS),
            TARGET: rng.integers(0, 2, ROWS),
        }
    )


@pytest.fixture(scope="module")
def reference() -> pd.DataFrame:
    return frame(seed=0)


@pytest.fixture(scope="module")
def validation() -> pd.DataFrame:
    return frame(seed=1)


def run(
    validation: pd.DataFrame, reference: pd.DataFrame | None, contract: DataContract | None = None
) -> ContractResult:
    return check_contract(
        validation, COLUMNS, TARGET, reference, contract or DataContract(ranges=RANGES)
    )


def by_name(result: ContractResult) -> dict[str, Check]:
    return {c.name: c for c in result.checks}


def failed(result: ContractResult) -> list[str]:
    return [c.name for c in result.checks if not c.passed]


@pytest.fixture(scope="module")
def clean(validation: pd.DataFrame, reference: pd.DataFrame) -> ContractResult:
    return run(validation, reference)


def test_clean_data_passes_every_check(clean: ContractResult) -> None:
    assert failed(clean) == []
    expected = {f"data.{col}.{k}" for col in "abc" for k in ("exists", "type", "not_null", "range")}
    assert set(by_name(clean)) == expected | {"data.target.exists"}
    assert all(c.kind == "data" for c in clean.checks)


def test_clean_run_keeps_ge_json_and_html(clean: ContractResult) -> None:
    assert clean.ge_json["success"] is True
    assert len(clean.ge_json["results"]) == len(clean.checks)
    assert "<html" in clean.ge_html.lower()
    assert [s.range_source for s in clean.specs] == ["reference"] * 3


def test_missing_column_fails_exists(validation: pd.DataFrame, reference: pd.DataFrame) -> None:
    result = run(validation.drop(columns=["b"]), reference)
    checks = by_name(result)
    exists = checks["data.b.exists"]
    assert not exists.passed
    assert exists.measured == "missing"
    assert "'b' is missing" in exists.reason
    assert not checks["data.b.not_null"].passed
    assert not checks["data.b.range"].passed
    assert not any(n.startswith(("data.a.", "data.c.")) for n in failed(result))
    # failures come first, so the cause is at the top
    assert result.checks[0].name.startswith("data.b.")


def test_missing_column_type_check_says_missing(
    validation: pd.DataFrame, reference: pd.DataFrame
) -> None:
    check = by_name(run(validation.drop(columns=["b"]), reference))["data.b.type"]
    assert not check.passed
    assert check.measured == "missing"


def test_missing_target_fails(validation: pd.DataFrame, reference: pd.DataFrame) -> None:
    result = run(validation.drop(columns=[TARGET]), reference)
    assert failed(result) == ["data.target.exists"]


def test_strings_where_signature_says_double_fail_type(
    validation: pd.DataFrame, reference: pd.DataFrame
) -> None:
    bad = validation.assign(a=[f"x{i}" for i in range(ROWS)])
    checks = by_name(run(bad, reference))
    assert not checks["data.a.type"].passed
    assert "float64" in str(checks["data.a.type"].threshold)
    assert "double" in checks["data.a.type"].reason
    assert checks["data.a.exists"].passed
    assert checks["data.b.type"].passed


def test_integers_satisfy_double(validation: pd.DataFrame, reference: pd.DataFrame) -> None:
    ints = validation.assign(c=validation["c"].round().astype("int64"))
    assert by_name(run(ints, reference))["data.c.type"].passed


@pytest.fixture(scope="module")
def with_nulls(validation: pd.DataFrame) -> pd.DataFrame:
    out = validation.copy()
    out.loc[:9, "a"] = np.nan
    return out


def test_nulls_fail_not_null(with_nulls: pd.DataFrame, reference: pd.DataFrame) -> None:
    result = run(with_nulls, reference)
    assert failed(result) == ["data.a.not_null"]
    check = by_name(result)["data.a.not_null"]
    assert check.measured == 10
    assert "10 null values" in check.reason


def test_nulls_pass_when_contract_allows_them(
    with_nulls: pd.DataFrame, reference: pd.DataFrame
) -> None:
    result = run(with_nulls, reference, DataContract(allow_nulls=True, ranges=RANGES))
    assert failed(result) == []
    assert not any(n.endswith(".not_null") for n in by_name(result))


def test_column_rule_allows_nulls_for_one_column(
    with_nulls: pd.DataFrame, reference: pd.DataFrame
) -> None:
    contract = DataContract(ranges=RANGES, columns={"a": ColumnRule(allow_null=True)})
    checks = by_name(run(with_nulls, reference, contract))
    assert "data.a.not_null" not in checks
    assert "data.b.not_null" in checks
    assert all(c.passed for c in checks.values())


@pytest.fixture(scope="module")
def shifted(validation: pd.DataFrame) -> pd.DataFrame:
    return validation.assign(c=validation["c"] + 100.0)


def test_values_far_outside_reference_fail_range(
    shifted: pd.DataFrame, reference: pd.DataFrame
) -> None:
    result = run(shifted, reference)
    assert failed(result) == ["data.c.range"]
    check = by_name(result)["data.c.range"]
    assert check.measured == 1.0
    assert "outside" in str(check.threshold)
    assert "100.0% of 'c'" in check.reason


def test_a_few_outliers_within_mostly_pass(
    validation: pd.DataFrame, reference: pd.DataFrame
) -> None:
    one_outlier = validation.copy()
    one_outlier.loc[0, "c"] = 1000.0  # 0.5% of rows, under the 2% that mostly=0.98 allows
    assert failed(run(one_outlier, reference)) == []


def test_explicit_column_rule_overrides_learned_range(
    shifted: pd.DataFrame, reference: pd.DataFrame
) -> None:
    contract = DataContract(ranges=RANGES, columns={"c": ColumnRule(min=0.0, max=200.0)})
    result = run(shifted, reference, contract)
    assert failed(result) == []
    spec = next(s for s in result.specs if s.name == "c")
    assert (spec.low, spec.high, spec.range_source, spec.mostly) == (0.0, 200.0, "policy", 1.0)


def test_explicit_column_rule_can_be_tighter_than_learned(
    validation: pd.DataFrame, reference: pd.DataFrame
) -> None:
    contract = DataContract(ranges=RANGES, columns={"c": ColumnRule(min=0.0, max=1.0)})
    result = run(validation, reference, contract)
    assert failed(result) == ["data.c.range"]


def test_no_range_checks_without_reference_or_when_disabled(
    shifted: pd.DataFrame, reference: pd.DataFrame
) -> None:
    disabled = DataContract(ranges=RangeRule(enabled=False))
    for result in (run(shifted, None), run(shifted, reference, disabled)):
        assert failed(result) == []
        assert not any(n.endswith(".range") for n in by_name(result))


def test_learned_range_is_widened_quantile_range() -> None:
    # pure: no Great Expectations involved
    reference = pd.DataFrame({"x": np.arange(101, dtype=float)})
    contract = DataContract(ranges=RangeRule(quantiles=(0.1, 0.9), widen=0.5, mostly=0.95))
    [spec] = learn_specs([("x", "double")], reference, contract)
    # quantiles 10 and 90, width 80, widened by 40 on each side
    assert spec.low == pytest.approx(-30.0)
    assert spec.high == pytest.approx(130.0)
    assert (spec.mostly, spec.range_source, spec.nullable) == (0.95, "reference", False)
