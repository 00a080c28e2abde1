"""Policies: ``default.yaml``, per-model overrides ``<model>.yaml``, and their schema."""

from modelship.policies.loader import LoadedPolicy, load_policy, policy_hash
from modelship.policies.schema import Policy

__all__ = ["LoadedPolicy", "Policy", "load_policy", "policy_hash"]
