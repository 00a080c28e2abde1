"""Policies: ``default.yaml``, per-model overrides ``<model>.yaml``, and their schema."""

from policies.loader import LoadedPolicy, load_policy, policy_hash
from policies.schema import Policy

__all__ = ["LoadedPolicy", "Policy", "load_policy", "policy_hash"]
