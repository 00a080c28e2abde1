"""Property tests of the parsers that read what strangers send (hypothesis).

Whatever a request's ``inputs``, a policy's YAML or a webhook's envelope holds, each parser
either gives its value or raises the project's own refusal (BadPayload, PolicyError, Refused)
with a message that names the fault: never another exception, which a server turns into a 500
and the CLI into a traceback. The example count is the profile's (tests/conftest.py): bounded
in CI, raised by `make fuzz`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from hypothesis import example, given
from hypothesis import strategies as st

from modelship.bentos.payload import BadPayload, to_matrix
from modelship.core.errors import PolicyError
from modelship.policies.loader import TEXT_SOURCE, load_policy
from modelship.registry.webhook import ALIAS_CREATED, CREATED, Refused, check, sign

COLUMNS = ["mean radius", "b", "c"]
MAX_ROWS = 4

#: any JSON value, with the model's column names among the keys so records and columns appear
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**40), max_value=10**40)
    | st.floats()
    | st.text(max_size=4)
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=6)
        | st.dictionaries(st.sampled_from(COLUMNS) | st.text(max_size=3), inner, max_size=5)
    ),
    max_leaves=40,
)
#: what a parser gets when a body is nested far deeper than any real one
deep_json = st.builds(
    lambda n, opener: opener * n, st.integers(0, 5000), st.sampled_from(["[", '{"a":', "[{"])
)


# -- payload.py ------------------------------------------------------------------------------


@given(json_values)
def test_any_inputs_give_a_finite_float32_table_or_bad_payload(inputs: Any) -> None:
    try:
        matrix = to_matrix(inputs, COLUMNS, MAX_ROWS)
    except BadPayload as e:
        assert str(e)  # a refusal always says what is wrong
        return
    assert matrix.dtype == np.float32 and matrix.shape[1] == len(COLUMNS)
    assert 1 <= matrix.shape[0] <= MAX_ROWS
    assert np.isfinite(matrix).all()


finite = st.floats(min_value=-3e38, max_value=3e38, allow_nan=False) | st.integers(-(2**53), 2**53)


@given(st.lists(st.lists(finite, min_size=3, max_size=3), min_size=1, max_size=MAX_ROWS))
def test_records_columns_and_rows_of_one_table_give_one_matrix(rows: list[list[float]]) -> None:
    records = [dict(zip(COLUMNS, row, strict=True)) for row in rows]
    columnar = {c: [row[j] for row in rows] for j, c in enumerate(COLUMNS)}
    expected = np.asarray(rows, dtype=np.float64).astype(np.float32)
    for shape in (rows, records, columnar):
        np.testing.assert_array_equal(to_matrix(shape, COLUMNS, MAX_ROWS), expected)


@given(json_values, st.sampled_from(["rows", "records", "columns"]))
def test_a_wrong_value_is_refused_by_row_and_column(value: Any, shape: str) -> None:
    rows: list[list[Any]] = [[1.0, 2.0, 3.0], [4.0, 5.0, value]]
    given_inputs: Any = {
        "rows": rows,
        "records": [dict(zip(COLUMNS, r, strict=True)) for r in rows],
        "columns": {c: [r[j] for r in rows] for j, c in enumerate(COLUMNS)},
    }[shape]
    try:
        to_matrix(given_inputs, COLUMNS, MAX_ROWS)
    except BadPayload as e:
        assert "row 1" in str(e) and "'c'" in str(e), str(e)
    else:  # only a number float32 can hold is taken
        assert isinstance(value, int | float) and not isinstance(value, bool)
        assert math.isfinite(value) and abs(value) <= 3.4028234663852886e38


# -- policies/loader.py ----------------------------------------------------------------------


def _leaves(data: dict[str, Any], prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    for key, value in data.items():
        if isinstance(value, dict) and value:
            yield from _leaves(value, (*prefix, key))
        else:
            yield (*prefix, key)


#: the repository's own policies: an installed modelship may ship another checkout's
POLICIES = Path(__file__).resolve().parent.parent / "policies"
DEFAULT = load_policy(policy_dir=POLICIES).policy.model_dump(mode="json", by_alias=True)
LEAVES = sorted(_leaves(DEFAULT))
SECTIONS = sorted({key for path in LEAVES for key in path})


def _nest(path: tuple[str, ...], value: Any) -> dict[str, Any]:
    for key in reversed(path):
        value = {key: value}
    return value  # type: ignore[no-any-return]


def _keys(error: PolicyError) -> list[str]:
    """The key path each error names: the place's last word (``file:line:col key.path``)."""
    return [place.rsplit(" ", 1)[-1] for place, _ in error.errors]


@given(st.text(max_size=200))
@example("a: " + "[" * 5000)  # PyYAML composes recursively: deep nesting is its own case
@example("a: &x [*x]\nvalidate: &y {contract: *y}")
def test_any_text_is_a_policy_or_a_policy_error(text: str) -> None:
    try:
        load_policy(text=text, policy_dir=POLICIES)
    except PolicyError as e:
        assert e.message and e.errors


@given(st.sampled_from(LEAVES), json_values)
def test_a_bad_value_is_named_by_its_key(path: tuple[str, ...], value: Any) -> None:
    try:
        load_policy(text=yaml.safe_dump(_nest(path, value)), policy_dir=POLICIES)
    except PolicyError as e:
        dotted = ".".join(path)
        # the error names the key, or the section holding it (a rule across two of its keys),
        # in the policy that set it, not in the default beneath
        named = [
            place
            for place, key in zip(e.errors, _keys(e), strict=True)
            if dotted.startswith(key) or key.startswith(dotted + ".")
        ]
        assert named, (dotted, str(e))
        assert all(place.startswith(TEXT_SOURCE) for place, _ in named), str(e)


@given(
    st.recursive(
        scalars,
        lambda inner: st.dictionaries(
            st.sampled_from(SECTIONS) | st.text("abcxyz_", min_size=1, max_size=4),
            inner,
            max_size=4,
        ),
        max_leaves=20,
    ).filter(lambda d: isinstance(d, dict))
)
def test_any_mapping_is_a_policy_or_errors_that_name_its_keys(data: dict[str, Any]) -> None:
    try:
        load_policy(text=yaml.safe_dump(data), policy_dir=POLICIES)
    except PolicyError as e:
        for key in _keys(e):
            assert key.split(".")[0] in data, (key, str(e))


# -- registry/webhook.py ---------------------------------------------------------------------

SECRET = "property-secret"
NOW = 1_800_000_000.0

envelopes = st.fixed_dictionaries(
    {
        "entity": st.sampled_from(["model_version", "model_version_alias"]) | json_values,
        "action": st.just("created") | json_values,
        "data": st.dictionaries(
            st.sampled_from(["name", "version", "alias"]), json_values | st.text(), max_size=3
        )
        | json_values,
    }
).map(lambda e: json.dumps(e).encode())
bodies = envelopes | st.binary(max_size=300) | deep_json.map(str.encode)


def _signed(body: bytes, timestamp: str, delivery_id: str = "d-1") -> dict[str, str]:
    return {
        "X-MLflow-Delivery-Id": delivery_id,
        "X-MLflow-Timestamp": timestamp,
        "X-MLflow-Signature": sign(SECRET, delivery_id, timestamp, body),
    }


@given(bodies)
def test_any_signed_envelope_is_a_delivery_or_refused_with_a_client_status(body: bytes) -> None:
    try:
        delivery = check(_signed(body, str(int(NOW))), body, secret=SECRET, now=NOW)
    except Refused as refused:
        assert refused.status in (400, 413, 422) and refused.reason, refused.reason
        return
    assert delivery.event in (CREATED, ALIAS_CREATED)
    assert (delivery.alias is not None) == (delivery.event == ALIAS_CREATED)


@given(
    st.text(max_size=30)
    | st.floats().map(repr)
    | st.floats(NOW - 1000, NOW + 1000).map(lambda t: f"{t:.3f}")
)
def test_only_a_timestamp_within_the_window_is_accepted(timestamp: str) -> None:
    body = json.dumps(
        {"entity": "model_version", "action": "created", "data": {"name": "m", "version": "3"}}
    ).encode()
    try:
        headers = _signed(body, timestamp)
    except UnicodeEncodeError:  # not something an HTTP header can carry
        return
    try:
        check(headers, body, secret=SECRET, now=NOW, max_age_s=300)
    except Refused as refused:
        assert refused.status in (400, 401), refused.reason
    else:
        assert abs(NOW - float(timestamp)) <= 300


HEADERS = ["X-MLflow-Delivery-Id", "X-MLflow-Timestamp", "X-MLflow-Signature", "x-other"]


@given(st.dictionaries(st.sampled_from(HEADERS), st.text(max_size=40)))
def test_unsigned_or_forged_headers_are_refused(headers: dict[str, str]) -> None:
    body = (
        b'{"entity": "model_version", "action": "created", "data": {"name": "m", "version": "1"}}'
    )
    try:
        check(headers, body, secret=SECRET, now=NOW)
    except Refused as refused:
        assert refused.status in (400, 401)
    else:
        raise AssertionError(f"accepted without the secret: {headers}")
