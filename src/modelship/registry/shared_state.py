"""State that every pipeline pod and a person's laptop reach: kept in MLflow, nowhere else.

A rollout's status and the monitor's cursor are JSON documents, commands (promote, abort) are
tags, both on one MLflow run per model and kind in the experiment ``modelship-state`` (found by
its tags, so nothing but the model's name is needed to reach it). A document is written whole
(``log_text`` replaces the artifact), so a reader never sees half of one.

Two controllers must never drive the same rollout, nor two monitors act on the same champion.
MLflow has no compare-and-set on tags, but creating a registered model is atomic (the name is
unique in the registry's database): a :class:`Lease` is a registered model named
``modelship-lock.MODEL.KIND``, tagged with its holder and when it expires. The holder renews it
while it works and deletes it when done; a lease whose holder died is taken over once it has
expired. It shows in the MLflow UI while held, which is where a person would look.
"""

from __future__ import annotations

import contextlib
import os
import socket
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from modelship.core.errors import ModelshipError
from modelship.core.settings import Settings
from modelship.registry.experiments import ensure_experiment

EXPERIMENT = "modelship-state"
TAG_OF = "modelship.state_of"
TAG_KIND = "modelship.state_kind"
#: registered models named so are leases, never models: listings leave them out
LOCK_PREFIX = "modelship-lock."


class LeaseHeld(ModelshipError):
    """Another process holds the lease: it drives this rollout, or runs this monitor."""


def holder_id() -> str:
    """Who holds a lease: the host (a pod's name on Kubernetes) and the process."""
    return f"{socket.gethostname()}:{os.getpid()}"


class SharedState:
    """One model's documents and tags of one kind (``rollout``, ``monitor``) in MLflow."""

    def __init__(self, client: MlflowClient, settings: Settings, model: str, kind: str) -> None:
        self.client, self.settings, self.model, self.kind = client, settings, model, kind
        self._run_id: str | None = None

    @property
    def run_id(self) -> str:
        if self._run_id is None:
            self._run_id = self._find() or self._create()
        return self._run_id

    def _find(self) -> str | None:
        found = self.client.get_experiment_by_name(EXPERIMENT)
        if found is None:
            return None
        runs = self.client.search_runs(
            [found.experiment_id],
            filter_string=f"tags.`{TAG_OF}` = '{_quoted(self.model)}' "
            f"and tags.`{TAG_KIND}` = '{self.kind}'",
            order_by=["attributes.start_time ASC"],
            max_results=1,
        )
        # two processes that both found none create two: every reader takes the oldest
        return str(runs[0].info.run_id) if runs else None

    def _create(self) -> str:
        experiment = ensure_experiment(self.client, self.settings, EXPERIMENT)
        self.client.create_run(
            experiment, run_name=f"{self.model}-{self.kind}",
            tags={TAG_OF: self.model, TAG_KIND: self.kind},
        )  # fmt: skip
        found = self._find()
        assert found is not None
        return found

    def read(self, name: str) -> str | None:
        """The document ``name``, or None when it was never written."""
        with tempfile.TemporaryDirectory(prefix="modelship-state-") as tmp:
            try:
                path = self.client.download_artifacts(self.run_id, name, tmp)
            except (MlflowException, OSError):
                return None
            return Path(path).read_text()

    def write(self, name: str, text: str) -> None:
        self.client.log_text(self.run_id, text, name)

    def tag(self, key: str) -> str | None:
        value = self.client.get_run(self.run_id).data.tags.get(key)
        return str(value) if value else None

    def set_tag(self, key: str, value: str) -> None:
        self.client.set_tag(self.run_id, key, value)

    def delete_tag(self, key: str) -> None:
        with contextlib.suppress(MlflowException):  # already gone: someone else took it
            self.client.delete_tag(self.run_id, key)


def state_and_lease(
    settings: Settings, model: str, kind: str, ttl_s: float = 120.0
) -> tuple[SharedState, Lease]:
    """``model``'s ``kind`` of state on the tracking server, and the lease that guards it."""
    client = MlflowClient(settings.tracking_uri, settings.registry_uri)
    return SharedState(client, settings, model, kind), Lease(client, model, kind, ttl_s)


def _quoted(text: str) -> str:
    return text.replace("'", "\\'")


class Lease:
    """An exclusive, expiring right to act for ``model``'s ``kind`` (see the module docstring)."""

    def __init__(self, client: MlflowClient, model: str, kind: str, ttl_s: float = 120.0) -> None:
        self.client, self.ttl_s = client, ttl_s
        self.name = f"{LOCK_PREFIX}{model}.{kind}"
        self.holder = holder_id()
        self.renewed_at = 0.0

    def acquire(self) -> None:
        """Hold the lease, or raise :class:`LeaseHeld` naming who holds it and until when."""
        for _ in range(2):
            try:
                self.client.create_registered_model(
                    self.name, tags=self._tags(),
                    description="held by a modelship controller or monitor; deleted when done",
                )  # fmt: skip
                self.renewed_at = time.monotonic()
                return
            except MlflowException as e:
                if "RESOURCE_ALREADY_EXISTS" not in str(e.error_code):
                    raise
            holder, expires = self._current()
            if holder is not None and expires > time.time():
                raise LeaseHeld(
                    f"{self.name} is held by {holder} until "
                    f"{datetime.fromtimestamp(expires, UTC):%H:%M:%S} UTC",
                    hint="another process drives this; wait for it, or, if it died, for the "
                    f"lease to expire ({self.ttl_s:.0f} s after its last renewal)",
                )
            self._delete_if(holder)  # expired: its holder is gone; take it over
        raise LeaseHeld(f"{self.name} was taken by another process while this one took it over")

    def renew(self) -> None:
        """Push the expiry on; raise :class:`LeaseHeld` when another process holds it now."""
        holder, _ = self._current()
        if holder != self.holder:
            raise LeaseHeld(
                f"{self.name} is no longer held by this process ({holder or 'nobody'} holds it)",
                hint="this process stopped renewing for longer than the lease lasts; "
                "the other holder goes on",
            )
        self.client.set_registered_model_tag(self.name, "expires", f"{time.time() + self.ttl_s}")
        self.renewed_at = time.monotonic()

    def renew_if_due(self) -> None:
        if time.monotonic() - self.renewed_at > self.ttl_s / 3:
            self.renew()

    def release(self) -> None:
        self._delete_if(self.holder)

    def _tags(self) -> dict[str, str]:
        return {"holder": self.holder, "expires": f"{time.time() + self.ttl_s}"}

    def _current(self) -> tuple[str | None, float]:
        try:
            tags = self.client.get_registered_model(self.name).tags
        except MlflowException:
            return None, 0.0
        return tags.get("holder"), float(tags.get("expires") or 0.0)

    def _delete_if(self, holder: str | None) -> None:
        now_holder, _ = self._current()
        if now_holder is not None and now_holder == holder:
            with contextlib.suppress(MlflowException):
                self.client.delete_registered_model(self.name)
