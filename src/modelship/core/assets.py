"""The files modelship ships as package data, found through :mod:`importlib.resources`.

They come from the repository's top-level data folders (``policies/``, ``pipelines/``,
``bentos/``), installed as ``modelship.assets.<folder>``. modelship is installed as plain files
(never zipped), so each resource is a real path that subprocesses and tools can open.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def asset_dir(folder: str) -> Path:
    """The installed folder of shipped data: ``policies``, ``pipelines`` or ``bentos``."""
    return Path(str(files(f"modelship.assets.{folder}")))


def asset(folder: str, name: str) -> Path:
    return asset_dir(folder) / name
