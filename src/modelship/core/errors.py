"""One exception tree for modelship, translated to exit codes and messages at the boundaries.

Each error says what was being attempted and what to do about it. Library errors (MLflow,
Great Expectations, KFP) are wrapped with ``raise ... from e`` so the cause stays visible.
"""

from __future__ import annotations


class ModelshipError(Exception):
    """Base of every error modelship raises on purpose."""

    #: exit code of the CLI when this error ends a command
    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}\n  hint: {self.hint}" if self.hint else self.message


class InputError(ModelshipError):
    """Bad input from the user: a name that does not exist, a bad file, a bad flag."""

    exit_code = 2


class RegistryError(InputError):
    """The MLflow registry could not give what was asked (missing model, version, alias)."""


class DigestMismatch(RegistryError):
    """A model's artifacts changed after the digest was first recorded."""


class PolicyError(InputError):
    """A policy file is invalid. ``errors`` lists (place, message) pairs."""

    def __init__(
        self, message: str, *, errors: list[tuple[str, str]] | None = None, hint: str | None = None
    ) -> None:
        super().__init__(message, hint=hint)
        self.errors = errors or []

    def __str__(self) -> str:
        lines = [self.message, *(f"  {place}: {msg}" for place, msg in self.errors)]
        if self.hint:
            lines.append(f"  hint: {self.hint}")
        return "\n".join(lines)


class DataError(InputError):
    """Validation or reference data could not be read or is unusable."""


class GateRejected(ModelshipError):
    """A gate refused the model; the verdict says why."""

    exit_code = 3


class StageError(ModelshipError):
    """A stage could not run at all (not a rejection): retry or fix the environment."""

    exit_code = 1


class PackagingError(StageError):
    """The Bento or its image could not be built."""


class RollbackFailed(StageError):
    """A rollback could not complete; what was and was not done is in the message."""
