"""A two-task pipeline for the rehearsal's launcher (tests/rehearsal.py): the first task writes a
note in its own home and as a KFP artifact; the second reads it through the artifact, or at the
path the first returned. KFP reads these signatures at run time: no ``from __future__ import
annotations`` here."""

from kfp import dsl
from kfp.dsl import Artifact, Input, Output

from modelship.core.settings import DEFAULT_SECRET
from modelship.pipelines.deploy import IMAGE, configure


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def write_note(text: str, note: Output[Artifact]) -> str:
    """Writes ``text`` twice: in its own home (returning the path) and as a KFP artifact."""
    from pathlib import Path

    mine = Path.home() / "note.txt"
    mine.write_text(text)
    Path(note.path).write_text(text)
    return str(mine)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def read_note(path: str, note: Input[Artifact], by_path: bool) -> str:
    """Reads the note through the artifact, or (``by_path``) at the path the writer returned."""
    from pathlib import Path

    return Path(path).read_text() if by_path else f"{note.path} {Path(note.path).read_text()}"


@dsl.pipeline(name="rehearsal-hand-offs")
def hand_offs(by_path: bool) -> str:
    written = configure(write_note(text="from the first pod"), "write", DEFAULT_SECRET)
    read = read_note(path=written.outputs["Output"], note=written.outputs["note"], by_path=by_path)
    return configure(read, "read", DEFAULT_SECRET).output  # type: ignore[no-any-return]
