"""The identity of a model: the sha256 digest of its artifact tree."""

from __future__ import annotations

import hashlib
from pathlib import Path

from modelship.core.errors import DigestMismatch

_CHUNK = 1 << 20


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(_CHUNK):
            h.update(block)
    return h.hexdigest()


def tree_digest(root: Path, *, skip_dirs: frozenset[str] = frozenset()) -> str:
    """sha256 over every file's relative path and content, in sorted order.

    Names are hashed with contents, so a renamed or added file changes the digest too. Files
    under a folder named in ``skip_dirs`` (at any depth) are left out.
    """
    root = Path(root)
    if root.is_file():
        return "sha256:" + _file_digest(root)
    h = hashlib.sha256()
    files = sorted(
        p
        for p in root.rglob("*")
        if p.is_file() and not skip_dirs.intersection(p.relative_to(root).parts[:-1])
    )
    for path in files:
        rel = path.relative_to(root).as_posix()
        h.update(rel.encode() + b"\0" + _file_digest(path).encode() + b"\n")
    return "sha256:" + h.hexdigest()


def verify(root: Path, expected: str, *, what: str) -> str:
    """Raise :class:`DigestMismatch` unless ``root`` still has digest ``expected``."""
    actual = tree_digest(root)
    if actual != expected:
        raise DigestMismatch(
            f"{what}: artifacts changed since they were first recorded "
            f"(recorded {expected[:19]}..., now {actual[:19]}...)",
            hint="register the changed model as a new version; a version's artifacts never change",
        )
    return actual
