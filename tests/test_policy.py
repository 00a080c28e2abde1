"""Loading and validating policies: layering, error places, the policy hash."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from modelship.core.errors import PolicyError
from modelship.policies.loader import (
    DEFAULT_POLICY,
    POLICY_DIR,
    TEXT_SOURCE,
    LoadedPolicy,
    load_policy,
    policy_hash,
    policy_yaml,
)
from modelship.policies.schema import Policy, Variant

MODEL = "churn"


@pytest.fixture
def policy_dir(tmp_path: Path) -> Path:
    shutil.copy(DEFAULT_POLICY, tmp_path / "default.yaml")
    return tmp_path


def with_override(policy_dir: Path, text: str) -> LoadedPolicy:
    (policy_dir / f"{MODEL}.yaml").write_text(text)
    return load_policy(MODEL, policy_dir=policy_dir)


def errors_of(policy_dir: Path, text: str) -> list[tuple[str, str]]:
    with pytest.raises(PolicyError) as info:
        with_override(policy_dir, text)
    assert info.value.errors, "a PolicyError from validation lists its errors"
    return info.value.errors


def test_default_policy_loads_and_matches_schema_defaults() -> None:
    loaded = load_policy()
    assert loaded.sources == (DEFAULT_POLICY,)
    # default.yaml spells out the schema's defaults: a drift between the two would be a surprise
    assert loaded.policy == Policy()
    assert loaded.policy.validate_stage.metrics == []


@pytest.mark.parametrize(
    "model", sorted(p.stem for p in POLICY_DIR.glob("*.yaml") if p.name != "default.yaml")
)
def test_every_shipped_model_policy_is_valid(model: str) -> None:
    loaded = load_policy(model)
    assert loaded.sources == (DEFAULT_POLICY, POLICY_DIR / f"{model}.yaml")


def test_missing_model_override_falls_back_to_default(policy_dir: Path) -> None:
    loaded = load_policy("no-such-model", policy_dir=policy_dir)
    assert loaded.sources == (policy_dir / "default.yaml",)
    assert loaded.policy == Policy()


def test_override_merges_mappings_and_replaces_lists(policy_dir: Path) -> None:
    loaded = with_override(
        policy_dir,
        """
validate:
  contract:
    allow_nulls: true
  metrics:
    - {name: f1, threshold: 0.8, max_relative_regression: 0.02}
optimize:
  variants: [fp32]
rollout:
  steps:
    - {weight: 25, pause_s: 30}
    - {weight: 100, pause_s: 0}
""",
    )
    policy = loaded.policy
    assert loaded.sources == (policy_dir / "default.yaml", policy_dir / f"{MODEL}.yaml")
    contract = policy.validate_stage.contract
    assert contract.allow_nulls is True
    # siblings of the overridden key keep their default values
    assert contract.ranges.quantiles == (0.001, 0.999)
    assert policy.validate_stage.validation_data.target == "target"
    assert policy.optimize.variants == [Variant.FP32]
    assert policy.optimize.batch_sizes == [1, 64, 1024]
    assert [s.weight for s in policy.rollout.steps] == [25, 100]
    assert policy.rollout.drain_s == 10.0
    [metric] = policy.validate_stage.metrics
    assert (metric.name, metric.threshold, metric.max_relative_regression) == ("f1", 0.8, 0.02)


def test_explicit_file_is_layered_over_model_override(policy_dir: Path, tmp_path: Path) -> None:
    (policy_dir / f"{MODEL}.yaml").write_text("loadtest: {rate: 50, duration_s: 5}\n")
    explicit = tmp_path / "explicit.yaml"
    explicit.write_text("loadtest: {rate: 80}\n")
    loaded = load_policy(MODEL, explicit, policy_dir=policy_dir)
    assert loaded.sources[-1] == explicit
    assert loaded.policy.loadtest.rate == 80.0
    assert loaded.policy.loadtest.duration_s == 5.0


def test_unknown_key_names_file_line_and_key_path(policy_dir: Path) -> None:
    errors = errors_of(
        policy_dir,
        """validate:
  contrat: {allow_nulls: true}
""",
    )
    [(place, message)] = errors
    assert place.startswith(f"{policy_dir / MODEL}.yaml:2:")
    assert place.endswith(" validate.contrat")
    assert "unknown key" in message


def test_unknown_key_with_block_value_names_the_key_line(policy_dir: Path) -> None:
    errors = errors_of(
        policy_dir,
        """validate:
  contrat:
    allow_nulls: true
""",
    )
    [(place, _)] = errors
    assert place.startswith(f"{policy_dir / MODEL}.yaml:2:")


def test_unknown_top_level_key_is_an_error(policy_dir: Path) -> None:
    [(place, message)] = errors_of(policy_dir, "monitr: {enabled: false}\n")
    assert place.endswith(" monitr")
    assert ".yaml:1:" in place
    assert "unknown key" in message


def test_wrong_type_is_an_error(policy_dir: Path) -> None:
    [(place, message)] = errors_of(policy_dir, "optimize:\n  enabled: maybe\n")
    assert place == f"{policy_dir / MODEL}.yaml:2:3 optimize.enabled"
    assert "'maybe'" in message


def test_wrong_literal_is_an_error(policy_dir: Path) -> None:
    [(place, message)] = errors_of(policy_dir, "rollout: {target: nomad}\n")
    assert place.endswith(" rollout.target")
    assert "'nomad'" in message


@pytest.mark.parametrize(
    ("text", "key", "words"),
    [
        (
            "validate:\n  metrics:\n    - {name: f1, max_relative_regression: 2}\n",
            "validate.metrics.0.max_relative_regression",
            "less than or equal to 1",
        ),
        (
            "validate:\n  metrics:\n    - {name: f1, max_regression: -0.1}\n",
            "validate.metrics.0.max_regression",
            "greater than or equal to 0",
        ),
        (
            "validate:\n  metrics:\n    - {name: f1}\n",
            "validate.metrics.0",
            "at least one of threshold",
        ),
        (
            "validate:\n  metrics:\n    - {name: fscore, threshold: 0.5}\n",
            "validate.metrics.0.name",
            "'fscore'",
        ),
        (
            "validate:\n  contract:\n    ranges: {quantiles: [0.99, 0.01]}\n",
            "validate.contract.ranges",
            "low < high",
        ),
        (
            "rollout:\n  steps:\n    - {weight: 50}\n    - {weight: 10}\n",
            "rollout",
            "must not decrease",
        ),
        ("rollout: {mirror_share: 1.5}\n", "rollout.mirror_share", "less than or equal to 1"),
        ("optimize: {batch_sizes: [1, 0]}\n", "optimize.batch_sizes.1", "greater than or equal"),
        (
            "optimize:\n  approximate:\n    kinds: [distillation]\n"
            "    max_metric_drop: {acuracy: 0.01}\n",
            "optimize.approximate.max_metric_drop.acuracy.[key]",
            "'acuracy'",
        ),
        (
            "optimize:\n  approximate: {max_metric_drop: {accuracy: -0.01}}\n",
            "optimize.approximate.max_metric_drop.accuracy",
            "greater than or equal to 0",
        ),
        (
            "optimize:\n  approximate: {kinds: [pruning], max_metric_drop: {f1: 0.01}}\n",
            "optimize.approximate.kinds.0",
            "'ensemble_pruning', 'structured_pruning' or 'distillation'",
        ),
        (
            "optimize:\n  approximate: {kinds: [distillation]}\n",
            "optimize.approximate",
            "max_metric_drop must name at least one metric",
        ),
        (
            "optimize:\n  approximate: {min_reference_rows: 0}\n",
            "optimize.approximate.min_reference_rows",
            "greater than or equal to 1",
        ),
    ],
)
def test_out_of_range_values_are_errors(policy_dir: Path, text: str, key: str, words: str) -> None:
    [(place, message)] = errors_of(policy_dir, text)
    assert place.startswith(f"{policy_dir / MODEL}.yaml:")
    assert place.endswith(f" {key}")
    assert words in message


def test_every_error_is_reported_at_once(policy_dir: Path) -> None:
    errors = errors_of(
        policy_dir,
        """validate:
  contrat: {}
rollout:
  mirror_share: 3
optimize:
  enabled: maybe
""",
    )
    keys = sorted(place.rsplit(" ", 1)[1] for place, _ in errors)
    assert keys == ["optimize.enabled", "rollout.mirror_share", "validate.contrat"]


def test_error_in_default_layer_names_the_default_file(policy_dir: Path) -> None:
    default = policy_dir / "default.yaml"
    default.write_text(default.read_text().replace("drain_s: 10", "drain_s: -1"))
    with pytest.raises(PolicyError) as info:
        load_policy(policy_dir=policy_dir)
    [(place, _)] = info.value.errors
    assert place.startswith(f"{default}:")
    assert place.endswith(" rollout.drain_s")


def test_invalid_yaml_reports_the_line(policy_dir: Path) -> None:
    with pytest.raises(PolicyError) as info:
        # line 4 is indented one space short of its siblings
        with_override(policy_dir, "validate:\n  contract:\n    allow_nulls: true\n   metrics: []\n")
    assert "not valid YAML" in info.value.message
    [(place, message)] = info.value.errors
    assert place == f"{policy_dir / MODEL}.yaml:4:4"
    assert message


def test_policy_that_is_not_a_mapping_is_an_error(policy_dir: Path) -> None:
    with pytest.raises(PolicyError) as info:
        with_override(policy_dir, "- just\n- a list\n")
    assert info.value.errors == [(f"{policy_dir / MODEL}.yaml:1:1", "got list")]


def test_empty_override_is_the_default(policy_dir: Path) -> None:
    assert with_override(policy_dir, "# nothing differs\n").policy == Policy()


def test_policy_hash_is_stable(policy_dir: Path) -> None:
    first = load_policy(policy_dir=policy_dir).digest
    assert first == load_policy(policy_dir=policy_dir).digest
    assert first == policy_hash(Policy())
    # restating a default value in an override is no change
    assert with_override(policy_dir, "rollout: {drain_s: 10}\n").digest == first


def test_policy_hash_changes_with_any_value(policy_dir: Path) -> None:
    base = load_policy(policy_dir=policy_dir).digest
    hashes = {
        base,
        with_override(policy_dir, "rollout: {drain_s: 11}\n").digest,
        with_override(policy_dir, "validate: {contract: {allow_nulls: true}}\n").digest,
        with_override(policy_dir, "optimize: {variants: [fp32]}\n").digest,
    }
    assert len(hashes) == 4


def test_a_policy_folder_without_its_own_default_uses_the_shipped_one(tmp_path: Path) -> None:
    (tmp_path / f"{MODEL}.yaml").write_text("loadtest:\n  rate: 42\n")
    loaded = load_policy(MODEL, policy_dir=tmp_path)
    assert loaded.sources == (DEFAULT_POLICY, tmp_path / f"{MODEL}.yaml")
    assert loaded.policy.loadtest.rate == 42


def test_a_missing_policy_folder_is_named_with_the_fix(tmp_path: Path) -> None:
    with pytest.raises(PolicyError) as info:
        load_policy(MODEL, policy_dir=tmp_path / "nope")
    assert str(tmp_path / "nope") in info.value.message
    assert "MODELSHIP_POLICIES" in (info.value.hint or "")


def test_a_policy_file_that_is_a_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PolicyError) as info:
        load_policy(MODEL, tmp_path)
    assert "is a directory" in info.value.message


@pytest.mark.parametrize("name", ["../default", "a/b", ".hidden", "x\\y"])
def test_a_model_name_that_cannot_name_a_file_is_refused(name: str, policy_dir: Path) -> None:
    with pytest.raises(PolicyError) as info:
        load_policy(name, policy_dir=policy_dir)
    assert "cannot name a policy file" in info.value.message


def test_a_policy_sent_as_text_reads_back_as_the_same_policy_and_hash() -> None:
    # what `modelship submit` sends a cluster run: the whole effective policy as YAML text
    loaded = load_policy("breast-cancer")
    again = load_policy("some-other-model", text=policy_yaml(loaded.policy))
    assert again.policy == loaded.policy and again.digest == loaded.digest
    assert again.sources[-1] == TEXT_SOURCE


def test_an_error_in_a_policy_sent_as_text_names_its_line() -> None:
    with pytest.raises(PolicyError) as info:
        load_policy(MODEL, text="rollout:\n  target: nowhere\n")
    (place, message), *_ = info.value.errors
    assert place.startswith(f"{TEXT_SOURCE}:2:") and "rollout.target" in place, place
    assert "nowhere" in message


def test_a_sent_policy_with_keys_this_modelship_lacks_names_the_version_skew() -> None:
    # a newer CLI submitted to an older pipeline image: the step says which side to update
    with pytest.raises(PolicyError) as info:
        load_policy(MODEL, text="rollout:\n  kubernetes:\n    from_the_future: 1\n")
    assert "unknown key" in info.value.errors[0][1]
    assert "make pipeline-image" in (info.value.hint or "")
