"""The load-test gate's decisions: pure functions of measured figures and the policy."""

from __future__ import annotations

from typing import Any

from modelship.core.verdict import Check
from modelship.policies.schema import LoadTest


def _ms(figures: dict[str, Any], key: str = "p99") -> float:
    return float(figures["latency_ms"][key])


def _shown(figures: dict[str, Any]) -> str:
    lat = figures["latency_ms"]
    return (
        f"p50 {lat['p50']} ms, p99 {lat['p99']} ms, p99.9 {lat['p99.9']} ms, max {lat['max']} ms "
        f"at {figures['achieved_rate']}/{figures['target_rate']} req/s, "
        f"errors {figures['error_rate']:.2%}"
    )


def slo_checks(figures: dict[str, Any], policy: LoadTest, prefix: str = "loadtest") -> list[Check]:
    """p99, error rate and sustained rate against the SLO; the client's own lag, apart."""
    slo = policy.slo
    if figures.get("stopped"):
        return [Check(name=f"{prefix}.server", kind="loadtest", passed=False,
                      reason=f"{figures['stopped']}; {_shown(figures)}")]  # fmt: skip
    p99 = _ms(figures)
    ratio = figures["achieved_rate"] / figures["target_rate"] if figures["target_rate"] else 0.0
    errors = ", ".join(f"{k} {v}" for k, v in sorted(figures["errors"].items())) or "none"
    checks = [
        Check(name=f"{prefix}.p99", kind="loadtest", passed=p99 <= slo.p99_ms,
              measured=p99, threshold=f"<= {slo.p99_ms} ms",
              reason=f"p99 {p99} ms {'within' if p99 <= slo.p99_ms else 'over'} the SLO of "
              f"{slo.p99_ms} ms ({_shown(figures)})"),
        Check(name=f"{prefix}.error_rate", kind="loadtest",
              passed=figures["error_rate"] <= slo.max_error_rate,
              measured=figures["error_rate"], threshold=f"<= {slo.max_error_rate}",
              reason=f"{figures['error_rate']:.3%} of {figures['sent']} requests failed "
              f"(errors: {errors})"),
        Check(name=f"{prefix}.rate", kind="loadtest", passed=ratio >= slo.min_rate_ratio,
              measured=round(ratio, 4), threshold=f">= {slo.min_rate_ratio}",
              reason=f"sustained {figures['achieved_rate']} of {figures['target_rate']} req/s "
              f"({ratio:.1%})"),
    ]  # fmt: skip
    lag = figures["client_lag_ms"]
    checks.append(Check(
        name=f"{prefix}.client", kind="loadtest", passed=lag <= policy.max_client_lag_ms,
        blocking=False, measured=lag, threshold=f"<= {policy.max_client_lag_ms} ms",
        reason=f"the load generator fell at most {lag} ms behind its schedule"
        + ("" if lag <= policy.max_client_lag_ms else
           ": it could not hold the rate on this machine, so the figures understate the load"),
    ))  # fmt: skip
    return checks


def champion_check(
    candidate: dict[str, Any], champion: dict[str, Any] | None, policy: LoadTest, why_not: str = ""
) -> Check:
    """The candidate's p99 against the champion's, measured in the same run under the same load."""
    name = "loadtest.vs_champion.p99"
    if policy.max_p99_regression is None:
        return Check(name=name, kind="loadtest", passed=True, skipped=True,
                     reason="loadtest.max_p99_regression is not set")  # fmt: skip
    if champion is None:
        return Check(name=name, kind="loadtest", passed=True, skipped=True,
                     reason=f"no comparison: {why_not}")  # fmt: skip
    ours, theirs = _ms(candidate), _ms(champion)
    allowed = max(theirs * (1 + policy.max_p99_regression), theirs + policy.p99_regression_floor_ms)
    worse = ours - theirs
    passed = ours <= allowed
    return Check(
        name=name, kind="loadtest", passed=passed, measured=round(worse, 3),
        threshold=f"p99 <= {allowed:.3f} ms",
        reason=f"p99 {ours} ms vs champion {theirs} ms under the same load: "
        + ("within" if passed else "worse than")
        + f" the allowed {policy.max_p99_regression:.0%} (or {policy.p99_regression_floor_ms} ms)",
    )  # fmt: skip


def probe_passes(figures: dict[str, Any], policy: LoadTest) -> bool:
    """One find-max probe: within the SLO, and the client held the rate."""
    return all(c.passed for c in slo_checks(figures, policy))


def next_probe(good: float | None, bad: float | None, policy: LoadTest, start: float) -> float:
    """Double until a probe fails, then bisect between the best pass and the first failure."""
    if bad is None:
        return min(policy.find_max.limit_rate, (good * 2) if good else start)
    low = good or 0.0
    return (low + bad) / 2
