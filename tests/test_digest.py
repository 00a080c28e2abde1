"""The identity of a model's artifacts: a digest over names and contents."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelship.core.errors import DigestMismatch, RegistryError
from modelship.registry.digest import tree_digest, verify


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    root = tmp_path / "model"
    (root / "data").mkdir(parents=True)
    (root / "MLmodel").write_text("flavors:\n  sklearn: {}\n")
    (root / "data" / "model.skops").write_bytes(b"\x00weights\x01" * 100)
    return root


def test_digest_is_stable(model_dir: Path) -> None:
    first = tree_digest(model_dir)
    assert first.startswith("sha256:")
    assert len(first) == len("sha256:") + 64
    assert tree_digest(model_dir) == first


def test_digest_changes_with_content(model_dir: Path) -> None:
    before = tree_digest(model_dir)
    (model_dir / "data" / "model.skops").write_bytes(b"\x00weights\x02" * 100)
    assert tree_digest(model_dir) != before


def test_digest_changes_when_a_file_is_renamed(model_dir: Path) -> None:
    before = tree_digest(model_dir)
    (model_dir / "data" / "model.skops").rename(model_dir / "data" / "other.skops")
    assert tree_digest(model_dir) != before


def test_digest_changes_when_a_file_moves_to_another_folder(model_dir: Path) -> None:
    before = tree_digest(model_dir)
    (model_dir / "data" / "model.skops").rename(model_dir / "model.skops")
    assert tree_digest(model_dir) != before


def test_digest_changes_when_a_file_is_added(model_dir: Path) -> None:
    before = tree_digest(model_dir)
    (model_dir / "data" / "extra.txt").write_text("")
    assert tree_digest(model_dir) != before


def test_digest_depends_on_the_tree_not_where_it_lies(model_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "elsewhere"
    copy.mkdir()
    (copy / "data").mkdir()
    for rel in ("MLmodel", "data/model.skops"):
        (copy / rel).write_bytes((model_dir / rel).read_bytes())
    assert tree_digest(copy) == tree_digest(model_dir)


def test_digest_of_a_single_file(model_dir: Path) -> None:
    path = model_dir / "MLmodel"
    assert tree_digest(path) == tree_digest(path)
    assert tree_digest(path) != tree_digest(model_dir)


def test_verify_returns_the_digest_when_unchanged(model_dir: Path) -> None:
    expected = tree_digest(model_dir)
    assert verify(model_dir, expected, what="churn v3") == expected


def test_verify_raises_when_artifacts_changed(model_dir: Path) -> None:
    expected = tree_digest(model_dir)
    (model_dir / "MLmodel").write_text("flavors:\n  python_function: {}\n")
    with pytest.raises(DigestMismatch) as info:
        verify(model_dir, expected, what="churn v3")
    err = info.value
    assert isinstance(err, RegistryError)
    assert err.message.startswith("churn v3: artifacts changed")
    assert expected[:19] in err.message
    assert err.hint
    assert "new version" in err.hint
