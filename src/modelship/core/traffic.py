"""The traffic router port: how the rollout controller moves traffic, whatever serves it.

One small interface, one implementation per target, picked by name from :data:`ROUTERS`
(the local gateway, Seldon Core v2, KServe). The controller only ever says which share of
requests the challenger gets, whether a share is mirrored to it, and when it takes over.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from modelship.core.errors import InputError


class BadWeights(InputError):
    """Weights outside 0..100, or a mirror share outside 0..1."""


@dataclass(frozen=True)
class Weights:
    """Percent of requests to the challenger (the champion gets the rest), and the share of the
    champion's requests also sent to the challenger with its answers discarded."""

    challenger: int = 0
    mirror: float = 0.0

    def __post_init__(self) -> None:
        # bool is an int to Python, but true is no percent
        if (
            not isinstance(self.challenger, int)
            or isinstance(self.challenger, bool)
            or not 0 <= self.challenger <= 100
        ):
            raise BadWeights(
                f"challenger weight must be a whole percent from 0 to 100, got {self.challenger!r}",
                hint="e.g. 10 sends one request in ten to the challenger",
            )
        if not 0.0 <= self.mirror <= 1.0:
            raise BadWeights(
                f"mirror share must be from 0 to 1, got {self.mirror!r}",
                hint="e.g. 0.5 mirrors half of the champion's requests to the challenger",
            )

    @property
    def champion(self) -> int:
        return 100 - self.challenger


class TrafficRouter(Protocol):
    """Moves traffic between the champion and the challenger of one model."""

    def get_weights(self) -> Weights: ...

    def set_weights(self, weights: Weights) -> None:
        """Takes effect for the next request; requests in flight finish where they are."""

    def promote(self) -> None:
        """The challenger becomes the only backend (champion); the old one gets no traffic."""
