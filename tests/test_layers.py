"""The import-linter contracts of `make lint` catch a change that breaks the layers."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import modelship

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint(tmp_path: Path, change: tuple[str, str] | None) -> subprocess.CompletedProcess[str]:
    """lint-imports with the project's contracts over a copy of the package, changed or not."""
    src = tmp_path / "src"
    shutil.copytree(
        Path(modelship.__file__).parent, src / "modelship",
        ignore=shutil.ignore_patterns("__pycache__"),
    )  # fmt: skip
    if change is not None:
        module, line = change
        path = src / "modelship" / module
        path.write_text(path.read_text() + f"\n{line}\n")
    env = {**os.environ, "PYTHONPATH": str(src)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(ROOT / "pyproject.toml"), "--no-cache"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
    )  # fmt: skip


def test_the_package_as_it_is_keeps_every_contract(tmp_path: Path) -> None:
    proc = _lint(tmp_path, None)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 broken" in proc.stdout


LAYERS = "layers: cli > pipelines > components > registry, gateway, bentos > policies > core"
STAGES = "stages never import each other"


@pytest.mark.parametrize(
    ("module", "line", "broken", "kept"),
    [
        ("core/errors.py", "import modelship.registry.client", LAYERS, STAGES),
        ("gateway/app.py", "import modelship.components.loadtest.gate", LAYERS, STAGES),
        (
            "components/optimize/stage.py",
            "import modelship.components.validate.probe",
            STAGES,
            LAYERS,
        ),
    ],
)
def test_an_import_against_the_layers_fails_the_lint(
    tmp_path: Path, module: str, line: str, broken: str, kept: str
) -> None:
    proc = _lint(tmp_path, (module, line))
    assert proc.returncode != 0
    said = " ".join(proc.stdout.split())  # the report wraps long contract names
    assert "1 broken" in said
    assert f"{broken} BROKEN" in said and f"{kept} KEPT" in said, said
