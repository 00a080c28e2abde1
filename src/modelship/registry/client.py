"""Everything modelship asks of the MLflow Model Registry.

Resolve a version by number or alias, download its artifacts and check their digest, record
state tags and verdicts, move the ``champion`` / ``challenger`` / ``previous`` aliases.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from modelship.core.errors import RegistryError
from modelship.core.identifiers import check_alias, check_model_name
from modelship.core.tags import TAG_DIGEST, TAG_LIVE_SINCE, TAG_REASON, TAG_STATE
from modelship.core.verdict import ModelState
from modelship.registry.digest import tree_digest, verify

CHAMPION = "champion"
CHALLENGER = "challenger"
PREVIOUS = "previous"


#: MLflow tag values are limited; keep reasons readable and within bounds
_MAX_TAG = 4000


@dataclass(frozen=True)
class ModelRef:
    """One resolved model version."""

    name: str
    version: str
    run_id: str | None
    source: str
    aliases: tuple[str, ...] = ()
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"

    @property
    def recorded_digest(self) -> str | None:
        return self.tags.get(TAG_DIGEST)

    def __str__(self) -> str:
        return f"{self.name} v{self.version}"


def _not_found(e: MlflowException) -> bool:
    return getattr(e, "error_code", "") in (
        "RESOURCE_DOES_NOT_EXIST",
        "NOT_FOUND",
        "INVALID_PARAMETER_VALUE",
    )


class Registry:
    """The MLflow registry as modelship uses it. One instance per entry point."""

    def __init__(self, client: MlflowClient | None = None) -> None:
        self.client = client or MlflowClient()

    # -- reading ---------------------------------------------------------------------------

    def resolve(self, name: str, version: str | None = None, alias: str | None = None) -> ModelRef:
        """The version named by number or alias; the latest version when neither is given."""
        if version and alias:
            raise RegistryError("give a version or an alias, not both")
        check_model_name(name)
        if alias:
            check_alias(alias)
        try:
            if alias:
                mv = self.client.get_model_version_by_alias(name, alias)
            elif version:
                if not str(version).isdigit():
                    raise RegistryError(
                        f"version must be a number, got {version!r}",
                        hint="use --alias for names such as champion",
                    )
                mv = self.client.get_model_version(name, str(version))
            else:
                versions = self.client.search_model_versions(f"name = '{name}'")
                if not versions:
                    raise RegistryError(
                        self._missing_message(name, version, alias), hint=self._hint(name)
                    )
                mv = max(versions, key=lambda v: int(v.version))
        except MlflowException as e:
            if not _not_found(e):
                raise RegistryError(f"could not read model {name!r} from the registry: {e}") from e
            raise RegistryError(
                self._missing_message(name, version, alias), hint=self._hint(name)
            ) from e
        return ModelRef(
            name=mv.name,
            version=str(mv.version),
            run_id=mv.run_id,
            source=mv.source,
            aliases=tuple(getattr(mv, "aliases", []) or []),
            tags=dict(mv.tags or {}),
        )

    def _missing_message(self, name: str, version: str | None, alias: str | None) -> str:
        if not alias and not version:
            return f"model {name!r} has no registered versions"
        what = f"alias {alias!r}" if alias else f"version {version}"
        return f"model {name!r} has no {what} in the registry"

    def _hint(self, name: str) -> str:
        try:
            versions = sorted(
                (str(v.version) for v in self.client.search_model_versions(f"name = '{name}'")),
                key=int,
            )
        except MlflowException:
            versions = []
        if not versions:
            return "check the model name; `modelship status MODEL` lists what is registered"
        return f"registered versions of {name!r}: {', '.join(versions)}"

    def champion(self, name: str) -> ModelRef | None:
        try:
            return self.resolve(name, alias=CHAMPION)
        except RegistryError:
            return None

    def versions(self, name: str) -> list[ModelRef]:
        try:
            found = self.client.search_model_versions(f"name = '{name}'")
        except MlflowException as e:
            raise RegistryError(f"could not list versions of {name!r}: {e}") from e
        # search results carry no aliases: read them from the registered model
        by_version: dict[str, list[str]] = {}
        if found:
            for alias, number in (self.client.get_registered_model(name).aliases or {}).items():
                by_version.setdefault(str(number), []).append(alias)
        refs = [
            ModelRef(
                v.name,
                str(v.version),
                v.run_id,
                v.source,
                tuple(sorted(by_version.get(str(v.version), []))),
                dict(v.tags or {}),
            )
            for v in found
        ]
        return sorted(refs, key=lambda r: int(r.version))

    # -- artifacts and identity --------------------------------------------------------------

    def download(self, ref: ModelRef, dest: Path) -> Path:
        """Download the version's artifacts into ``dest`` (replaced if present)."""
        import mlflow.artifacts

        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        # download beside the destination, then move into place: no half-written model dir
        staging = Path(tempfile.mkdtemp(prefix=".download-", dir=dest.parent))
        try:
            local = mlflow.artifacts.download_artifacts(artifact_uri=ref.uri, dst_path=str(staging))
        except (MlflowException, OSError) as e:
            shutil.rmtree(staging, ignore_errors=True)
            raise RegistryError(f"could not download the artifacts of {ref}: {e}") from e
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(local, dest)
        shutil.rmtree(staging, ignore_errors=True)
        return dest

    def checked_download(self, ref: ModelRef, dest: Path) -> tuple[Path, str]:
        """Download and check the digest against the one first recorded; record it if none yet."""
        path = self.download(ref, dest)
        recorded = ref.recorded_digest
        if recorded is None:
            digest = tree_digest(path)
            self.client.set_model_version_tag(ref.name, ref.version, TAG_DIGEST, digest)
            return path, digest
        return path, verify(path, recorded, what=str(ref))

    def record_digest(self, ref: ModelRef) -> str:
        """Take and record the digest now, at registration, so any later change is caught."""
        with tempfile.TemporaryDirectory(prefix="modelship-digest-") as tmp:
            _, digest = self.checked_download(ref, Path(tmp) / "model")
        return digest

    # -- writing -----------------------------------------------------------------------------

    def set_state(self, ref: ModelRef, state: ModelState, reason: str) -> None:
        self.client.set_model_version_tag(ref.name, ref.version, TAG_STATE, str(state))
        self.client.set_model_version_tag(ref.name, ref.version, TAG_REASON, reason[:_MAX_TAG])

    def set_tag(self, ref: ModelRef, key: str, value: str) -> None:
        self.client.set_model_version_tag(ref.name, ref.version, key, value[:_MAX_TAG])

    def mark_live(self, ref: ModelRef) -> None:
        """``ref`` begins to serve now (``TAG_LIVE_SINCE``)."""
        self.set_tag(ref, TAG_LIVE_SINCE, f"{time.time():.6f}")

    def promote(self, ref: ModelRef) -> ModelRef | None:
        """Make ``ref`` the champion; the old champion becomes ``previous``. Returns the old one."""
        old = self.champion(ref.name)
        if old is not None and old.version == ref.version:
            return None
        if CHALLENGER not in self.client.get_model_version(ref.name, ref.version).aliases:
            self.mark_live(ref)  # no canary came first: it begins to serve now
        if old is not None:
            self.client.set_registered_model_alias(ref.name, PREVIOUS, old.version)
        self.client.set_registered_model_alias(ref.name, CHAMPION, ref.version)
        with contextlib.suppress(MlflowException):  # no challenger alias to clear
            self.client.delete_registered_model_alias(ref.name, CHALLENGER)
        self.set_state(ref, ModelState.PROMOTED, "promoted to champion")
        self.audit(ref.name, "promoted", ref.version,
                   champion_before=old.version if old else None)  # fmt: skip
        return old

    def set_challenger(self, ref: ModelRef) -> None:
        self.mark_live(ref)
        self.client.set_registered_model_alias(ref.name, CHALLENGER, ref.version)
        self.audit(ref.name, "canary started", ref.version)

    def audit(
        self, model: str, action: str, version: str | None = None, by: str | None = None,
        **detail: object,
    ) -> None:  # fmt: skip
        """Record a change to what serves ``model`` in its audit trail (registry/audit.py)."""
        from modelship.registry.audit import record

        record(self.client, model, action, version, by, **detail)
