"""Fixtures several test modules share: a private modelship home, its settings, the demo's data.

All three are module-scoped: each module that asks for them gets its own home (its own embedded
MLflow store) and keeps it for all of its tests, as when each module defined them itself. A
module that needs something else (a fresh home per test, say) defines its own fixture of the same
name, which wins over these for that module.

tests.support is imported inside the fixtures: it pulls in MLflow, which the modules that use
none of these need not pay for.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings

if TYPE_CHECKING:
    import pandas as pd

    from modelship.core.settings import Settings


#: examples per property and per fuzzed API operation: bounded in CI, raised by `make fuzz`
FUZZ_EXAMPLES = int(os.environ.get("MODELSHIP_FUZZ_EXAMPLES") or 100)

# no example database: CI starts from a fresh clone each time, and a failure prints the example
# (and the seed that reproduces it); the parsers are fast, so no example is ever "too slow"
hypothesis_settings.register_profile(
    "modelship",
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
hypothesis_settings.load_profile("modelship")


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty MODELSHIP_HOME for the module."""
    return tmp_path_factory.mktemp("home")


@pytest.fixture(scope="module")
def data() -> tuple[pd.DataFrame, pd.Series, pd.DataFrame, pd.DataFrame]:
    """The demo's breast-cancer split: x_train, y_train, reference, validation."""
    from tests.support import breast_cancer

    return breast_cancer()


@pytest.fixture(scope="module")
def settings(home: Path) -> Settings:
    """Settings for the module's ``home``, prepared: MLflow points at its embedded store."""
    from tests.support import settings_for

    return settings_for(home)


# Images the tests build (Bentos' images, the rehearsal's pipeline image, the copies pulled from
# the tests' registries) stay in the node's buildah store after the run; on this store driver
# (vfs) each is a full copy of its root file system, hundreds of MB, so a few CI runs fill a disk.
# The controller (not an xdist worker, which may end while others still use an image) notes the
# store's images when the run starts and removes the ones the run added under the names tests
# give (a Bento's `localhost/modelship-MODEL`, anything on a tests' registry at 127.0.0.1, an
# untagged one). Others stay: the debootstrap base (a cache, kept on purpose: it costs minutes to
# make) and whatever someone built meanwhile, `make pipeline-image`'s `localhost/modelship` say.

_IMAGES_BEFORE = pytest.StashKey[dict[str, set[str]] | None]()


def _images() -> dict[str, set[str]] | None:
    """The buildah store's image ids and their names; None where buildah does not run."""
    import shutil
    import subprocess

    if shutil.which("buildah") is None:
        return None
    listed = subprocess.run(
        ["buildah", "--storage-driver", "vfs", "images", "--all", "--no-trunc", "--format",
         "{{.ID}} {{.Name}}:{{.Tag}}"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if listed.returncode != 0:
        return None
    images: dict[str, set[str]] = {}
    for line in listed.stdout.splitlines():
        image_id, _, name = line.strip().partition(" ")
        images.setdefault(image_id, set()).add(name.strip())
    return images


# MLflow falls back to ./mlflow.db when a client is made with no tracking URI set. Every command
# and test runs in the checkout, so a store that appears there during the run is a code path
# that writes to the wrong store (`modelship rollout abort` once put its audit entry there, not
# where `modelship audit` reads it): the run fails, naming the file.
_STRAY_STORE = pytest.StashKey[bool]()


def _stray_store(config: pytest.Config) -> Path:
    return config.rootpath / "mlflow.db"


def pytest_configure(config: pytest.Config) -> None:
    if not hasattr(config, "workerinput"):
        config.stash[_IMAGES_BEFORE] = _images()
        config.stash[_STRAY_STORE] = _stray_store(config).exists()


def pytest_sessionfinish(session: pytest.Session) -> None:
    if hasattr(session.config, "workerinput"):
        return
    stray = _stray_store(session.config)
    if not session.config.stash.get(_STRAY_STORE, True) and stray.exists():
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(
                f"FAILED: {stray} appeared during the run: something made an MlflowClient with no "
                "tracking URI (MLflow's default store is ./mlflow.db). Give it the settings' "
                "store (Settings.tracking_uri) and delete the file.", red=True,
            )  # fmt: skip
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    before = session.config.stash.get(_IMAGES_BEFORE, None)
    after = _images()
    if before is None or after is None:
        return
    added = [i for i, names in after.items() if i not in before and all(map(_tests, names))]
    if added:
        import subprocess

        subprocess.run(["buildah", "--storage-driver", "vfs", "rmi", "--force", *added],
                       capture_output=True, check=False)  # fmt: skip


def _tests(name: str) -> bool:
    """Whether an image name is one the tests give."""
    from modelship.components.package.image import BASE_IMAGE

    if name == BASE_IMAGE:
        return False
    return name.startswith(("localhost/modelship-", "127.0.0.1:")) or name.startswith("<none>")


#: the test files that take longest, longest first (from the slowest tests listed at the end of
#: full runs: about 12 to 4 minutes each). With ``--dist loadfile`` a worker takes the next file
#: when it is nearly through its last, so the long ones start at once and the short ones fill
#: in at the end, instead of one long file running alone after the other worker has finished
#: (test_demo.py did, for 8 minutes). ``--no-loadscope-reorder`` (pyproject.toml) keeps this
#: order; xdist would otherwise put the files with most tests first.
LONGEST_FIRST = (
    "test_deploy.py", "test_crash.py", "test_rehearsal.py", "test_demo.py",
    "test_approximate.py", "test_image.py", "test_install.py", "test_loadtest.py",
    "test_canary_analysis.py", "test_package.py",
)  # fmt: skip


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # the rest as collected
