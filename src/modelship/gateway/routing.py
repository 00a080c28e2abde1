"""Which backend answers a request: pure functions of the weights, a key and a random draw."""

from __future__ import annotations

import zlib
from enum import StrEnum


class Variant(StrEnum):
    CHAMPION = "champion"
    CHALLENGER = "challenger"

    @property
    def other(self) -> Variant:
        return Variant.CHALLENGER if self is Variant.CHAMPION else Variant.CHAMPION


def bucket(key: str) -> float:
    """A stable place in [0, 100) for a request key (user id, request id)."""
    return (zlib.crc32(key.encode()) % 10_000) / 100.0


def choose(challenger_weight: float, key: str | None, draw: float) -> Variant:
    """The variant for one request: by the key's bucket when sticky, else by ``draw`` in [0, 1).

    A key below the weight goes to the challenger, so raising the weight only ever moves keys
    from the champion to the challenger: a user never flips back and forth during a canary.
    """
    place = bucket(key) if key is not None else draw * 100.0
    return Variant.CHALLENGER if place < challenger_weight else Variant.CHAMPION


def effective_weight(challenger_weight: float, healthy: dict[Variant, bool]) -> float:
    """The challenger's share once unhealthy backends are ejected (their share to the other)."""
    champion_ok = healthy.get(Variant.CHAMPION, False)
    challenger_ok = healthy.get(Variant.CHALLENGER, False)
    if challenger_ok and not champion_ok:
        return 100.0
    if champion_ok and not challenger_ok:
        return 0.0
    return challenger_weight
