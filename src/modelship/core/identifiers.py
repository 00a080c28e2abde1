"""Model names, versions and aliases, checked at every door before anything uses them.

The rules are MLflow's own (a registered model's name is not empty and holds no ``/`` or ``:``,
a version is a positive integer, an alias is letters, digits, ``_`` and ``-``), tightened where
a name also reaches a file path or a process argument: no control characters, no leading
``-`` (it would read as an option), not ``.`` or ``..``, at most 256 characters.
"""

from __future__ import annotations

import re

from modelship.core.errors import InputError

_VERSION = re.compile(r"[1-9][0-9]{0,9}")
_ALIAS = re.compile(r"[A-Za-z0-9_-]{1,255}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def check_model_name(name: str) -> str:
    """``name`` when it is a model name modelship acts on, else :class:`InputError`."""
    why = None
    if not name or not name.strip():
        why = "it is empty"
    elif len(name) > 256:
        why = "it is longer than 256 characters"
    elif "/" in name or ":" in name:
        why = "MLflow names cannot contain '/' or ':'"
    elif _CONTROL.search(name):
        why = "it holds control characters"
    elif "'" in name or '"' in name:
        why = "it holds a quote, which MLflow's search filters cannot carry"
    elif name.startswith("-"):
        why = "it starts with '-', which a command line reads as an option"
    elif name.strip() in (".", ".."):
        why = "it names a folder, not a model"
    if why:
        raise InputError(f"{name[:80]!r} is not a model name: {why}",
                         hint="use the registered model's name as MLflow shows it")  # fmt: skip
    return name


def check_version(version: str) -> str:
    if not _VERSION.fullmatch(str(version)):
        raise InputError(f"{str(version)[:40]!r} is not a model version: versions are 1, 2, 3...",
                         hint="`modelship status MODEL` lists the versions")  # fmt: skip
    return str(version)


def check_alias(alias: str) -> str:
    if not _ALIAS.fullmatch(alias):
        raise InputError(f"{alias[:80]!r} is not an alias: letters, digits, '_' and '-' only",
                         hint="e.g. champion, challenger")  # fmt: skip
    return alias
