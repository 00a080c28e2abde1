"""modelship as a user gets it: the wheel, installed in a new venv, run away from the checkout.

The wheel is built from a copy of the checkout's files (tracked and untracked, never ignored
ones: no stale ``build/`` or ``*.egg-info`` can slip into it) and its file list is checked:
only the ``modelship`` package and its dist-info, every package under ``src/modelship`` and
the shipped data. It is installed with the tested lock (``constraints.txt``) in a venv outside
the repository, and every command then runs from an empty temporary folder with a fresh
MODELSHIP_HOME, no PYTHONPATH and no path into the checkout: the shipped policy checks, the
compiled pipelines equal the repository's, and a small scikit-learn model deploys through
validate, optimize and package.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
import tomllib
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
SRC = REPO / "src"
MODEL = "install-check"

#: trains and registers a small model the way a user's training job would: the data the
#: default policy reads (runs:/{run_id}/modelship/*.parquet) logged with the run
REGISTER = """\
import sys

import mlflow
from mlflow.models import infer_signature
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from modelship.core.settings import Settings
from modelship.datasets import log_datasets
from modelship.registry.experiments import ensure_experiment

settings = Settings.from_env()
settings.prepare()
x, y = load_breast_cancer(return_X_y=True, as_frame=True)
x_train, x_val, y_train, y_val = train_test_split(
    x, y, test_size=0.45, random_state=7, stratify=y
)
model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(x_train, y_train)
experiment = ensure_experiment(mlflow.MlflowClient(), settings, "install-check-training")
with mlflow.start_run(experiment_id=experiment):
    info = mlflow.sklearn.log_model(
        model,
        name="model",
        signature=infer_signature(x_train, model.predict(x_train.head(5))),
        input_example=x_train.head(3),
        registered_model_name=sys.argv[1],
    )
    log_datasets(
        x_val.assign(target=y_val.to_numpy()), x_train.assign(target=y_train.to_numpy())
    )
print(info.registered_model_version)
"""

#: a policy of the user's own: a metric gate; no load test (a rollout needs no canary for a
#: first version, so none starts) and no OCI image
POLICY = """\
validate:
  metrics:
    - {name: accuracy, threshold: 0.9}
loadtest:
  enabled: false
package:
  image: never
"""

#: where the installed modelship is, as the venv's python sees it
PROBE = """\
import json, sys, sysconfig
import modelship, modelship.cli
from modelship.core.assets import asset_dir
print(json.dumps({
    "file": modelship.__file__,
    "cli": modelship.cli.__file__,
    "policies": str(asset_dir("policies")),
    "purelib": sysconfig.get_paths()["purelib"],
    "path": sys.path,
}))
"""


# -- processes ---------------------------------------------------------------------------------


def _session(sid: int, since: float) -> list[psutil.Process]:
    """The processes still in session ``sid`` (started after ``since``)."""
    found = []
    for proc in psutil.process_iter():
        try:
            if os.getsid(proc.pid) == sid and proc.create_time() >= since - 1:
                found.append(proc)
        except (OSError, psutil.Error):
            continue
    return found


def _stop(procs: Sequence[psutil.Process]) -> None:
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(list(procs), timeout=10)


def run(
    cmd: Sequence[str], *, cwd: Path, env: Mapping[str, str], timeout: float
) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` in its own session; fail if it runs past ``timeout`` or leaves a process.

    Whatever it started is killed either way, so no test leaves anything running.
    """
    started = time.time()
    proc = subprocess.Popen(
        list(cmd), cwd=cwd, env=dict(env), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, start_new_session=True,
    )  # fmt: skip
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _stop([*_session(proc.pid, started), psutil.Process(proc.pid)])
        out, err = proc.communicate()
        raise AssertionError(f"{cmd} ran past {timeout} s; stderr:\n{err[-4000:]}") from None
    finally:
        if proc.poll() is None:  # interrupted: stop it and its children
            _stop([*_session(proc.pid, started), psutil.Process(proc.pid)])
            proc.wait()
    left = _session(proc.pid, started)
    _stop(left)
    assert not left, f"{cmd} left processes running: {[p.pid for p in left]}"
    return subprocess.CompletedProcess(list(cmd), proc.returncode, out, err)


def clean_env(venv: Path, home: Path) -> dict[str, str]:
    """This environment without anything that leads to the checkout or to another store."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP")
        and not k.startswith(("MLFLOW_", "MODELSHIP_", "BENTOML_"))
    }
    keep = [p for p in env.get("PATH", "").split(os.pathsep) if p and not _inside(Path(p), REPO)]
    env["PATH"] = os.pathsep.join([str(venv / "bin"), *keep])
    env["MODELSHIP_HOME"] = str(home)
    env["PYTHONNOUSERSITE"] = "1"
    return env


def _inside(path: Path, folder: Path) -> bool:
    return path.resolve().is_relative_to(folder)


# -- the wheel and the venv --------------------------------------------------------------------


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel, built (isolated, from pyproject's build-system) from a copy of the checkout."""
    tree = tmp_path_factory.mktemp("tree")
    listed = subprocess.run(
        ["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True, check=True, text=True,
    ).stdout  # fmt: skip
    for name in filter(None, listed.split("\0")):
        source = REPO / name
        if source.is_file():  # deleted in the work tree, not yet in the index: gone
            (tree / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, tree / name)
    out = tmp_path_factory.mktemp("dist")
    proc = run(
        [sys.executable, "-m", "build", "--wheel", "--outdir", str(out), str(tree)],
        cwd=tree, env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (built,) = out.glob("modelship-*.whl")
    return built


@dataclass(frozen=True)
class Installed:
    venv: Path
    #: the venv's site-packages
    purelib: Path

    @property
    def modelship(self) -> str:
        return str(self.venv / "bin" / "modelship")

    @property
    def python(self) -> str:
        return str(self.venv / "bin" / "python")


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory, wheel: Path) -> Iterator[Installed]:
    """A new venv outside the checkout with the wheel and the tested lock installed.

    Removed afterwards: it is 1.5 GB, and pytest keeps the last three runs' temporary folders.
    """
    venv = tmp_path_factory.mktemp("install") / "venv"
    assert not _inside(venv, REPO)
    cwd = tmp_path_factory.mktemp("pip-cwd")
    env = clean_env(venv, cwd / "unused-home")
    made = run([sys.executable, "-m", "venv", str(venv)], cwd=cwd, env=env, timeout=120)
    assert made.returncode == 0, made.stderr
    pip = run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet",
         "-c", str(REPO / "constraints.txt"), str(wheel)],
        cwd=cwd, env=env, timeout=480,
    )  # fmt: skip
    assert pip.returncode == 0, pip.stderr[-4000:]
    probe = run([str(venv / "bin" / "python"), "-c", PROBE], cwd=cwd, env=env, timeout=120)
    assert probe.returncode == 0, probe.stderr[-4000:]
    yield Installed(venv, Path(json.loads(probe.stdout)["purelib"]))
    shutil.rmtree(venv, ignore_errors=True)


@dataclass(frozen=True)
class Place:
    """An empty working folder, a MODELSHIP_HOME not yet made, and a folder for inputs."""

    cwd: Path
    home: Path
    inputs: Path
    env: dict[str, str]


@pytest.fixture()
def place(tmp_path: Path, installed: Installed) -> Place:
    cwd, inputs = tmp_path / "work", tmp_path / "inputs"
    cwd.mkdir()
    inputs.mkdir()
    home = tmp_path / "home"
    assert not _inside(cwd, REPO) and not _inside(home, REPO)
    (inputs / "policy.yaml").write_text(POLICY)
    return Place(cwd, home, inputs, clean_env(installed.venv, home))


def modelship(
    installed: Installed, place: Place, *args: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return run([installed.modelship, *args], cwd=place.cwd, env=place.env, timeout=timeout)


# -- the wheel's contents ----------------------------------------------------------------------


def test_wheel_holds_the_package_and_its_data_only(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        data = {name: archive.read(name) for name in names if not name.endswith("/")}
    dist_info = next(n.split("/")[0] for n in names if n.split("/")[0].endswith(".dist-info"))
    assert {n.split("/")[0] for n in names} == {"modelship", dist_info}
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    shipped = {
        "modelship/assets/policies/default.yaml": REPO / "policies" / "default.yaml",
        "modelship/assets/pipelines/deploy.yaml": REPO / "pipelines" / "deploy.yaml",
        "modelship/assets/pipelines/monitor.yaml": REPO / "pipelines" / "monitor.yaml",
        "modelship/assets/pipelines/rbac.yaml": REPO / "pipelines" / "rbac.yaml",
        "modelship/assets/bentos/Containerfile": REPO / "bentos" / "Containerfile",
    }
    dashboards = sorted((SRC / "modelship" / "gateway" / "dashboards").glob("*.json"))
    assert dashboards
    for dashboard in dashboards:
        shipped[f"modelship/gateway/dashboards/{dashboard.name}"] = dashboard
    for name, source in shipped.items():
        assert name in names, f"{name} is missing from the wheel"
        assert data[name] == source.read_bytes(), f"{name} differs from {source}"
    # every package (a folder with __init__.py) of src/ and of the folders pyproject maps to a
    # package, so that none is missing from pyproject's explicit `packages` list
    with (REPO / "pyproject.toml").open("rb") as f:
        mapped = tomllib.load(f)["tool"]["setuptools"]["package-dir"]
    expected = set()
    for package, folder in mapped.items():
        root = REPO / folder
        prefix = package.replace(".", "/") + "/" if package else ""
        for init in root.rglob("__init__.py"):
            expected.add(prefix + init.relative_to(root).as_posix())
    assert "modelship/assets/policies/__init__.py" in expected
    missing = sorted(expected - names)
    assert not missing, f"packages missing from the wheel (pyproject's `packages`?): {missing}"
    modules = {p.relative_to(SRC).as_posix() for p in (SRC / "modelship").rglob("*.py")}
    assert not modules - names, f"modules missing from the wheel: {sorted(modules - names)}"
    entry_points = data[f"{dist_info}/entry_points.txt"].decode()
    assert "modelship = modelship.cli:main" in entry_points


# -- the installed package, away from the checkout ---------------------------------------------


def test_modelship_is_imported_from_the_venv(installed: Installed, place: Place) -> None:
    proc = run([installed.python, "-c", PROBE], cwd=place.cwd, env=place.env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    found: dict[str, Any] = json.loads(proc.stdout)
    site = installed.purelib
    assert _inside(site, installed.venv)
    for key in ("file", "cli", "policies"):
        assert _inside(Path(found[key]), site), f"{key}: {found[key]} is not in {site}"
        assert not _inside(Path(found[key]), REPO)
    assert not [p for p in found["path"] if p and _inside(Path(p), REPO)], found["path"]
    assert not place.home.exists()


def test_policy_check_takes_the_shipped_default_and_a_users_file(
    installed: Installed, place: Place
) -> None:
    default = installed.purelib / "modelship" / "assets" / "policies" / "default.yaml"
    own = place.inputs / "policy.yaml"
    for file in (default, own):
        proc = modelship(installed, place, "policy", "check", str(file))
        assert proc.returncode == 0, proc.stderr
        assert f"{file}: ok (policy hash " in proc.stdout
    assert not place.home.exists() and not list(place.cwd.iterdir())


def test_compile_writes_the_repositorys_pipelines(installed: Installed, place: Place) -> None:
    out = place.cwd / "compiled"
    proc = modelship(installed, place, "compile", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["deploy.yaml", "monitor.yaml", "rbac.yaml"]
    for name in ("deploy.yaml", "monitor.yaml", "rbac.yaml"):
        assert (out / name).read_bytes() == (REPO / "pipelines" / name).read_bytes(), (
            f"compiled {name} differs from pipelines/{name}: run `modelship compile`"
        )


def test_deploy_through_validate_optimize_and_package(installed: Installed, place: Place) -> None:
    script = place.inputs / "register.py"
    script.write_text(REGISTER)
    registered = run(
        [installed.python, str(script), MODEL], cwd=place.cwd, env=place.env, timeout=300
    )
    assert registered.returncode == 0, registered.stderr[-4000:]
    assert registered.stdout.split()[-1] == "1"
    policy = place.inputs / "policy.yaml"
    proc = modelship(
        installed, place, "deploy", MODEL, "--version", "1", "--policy", str(policy), "--json",
        timeout=420,
    )  # fmt: skip
    logs = sorted((place.home / "runs").glob("*.log"))
    log = logs[-1].read_text()[-4000:] if logs else "(no run log)"
    assert proc.returncode == 0, f"{proc.stderr[-2000:]}\nthe run's log ends:\n{log}"
    summary: dict[str, Any] = json.loads(proc.stdout)
    assert (summary["model"], summary["version"], summary["outcome"]) == (MODEL, "1", "passed")
    stages = {stage["name"]: stage for stage in summary["stages"]}
    for name in ("validate", "optimize", "package"):
        stage = stages[name]
        assert stage["passed"] and not stage["skipped"], f"{name}: {stage['reason']}"
    checks = {c["name"]: c for stage in summary["stages"] for c in stage["checks"]}
    assert checks["metric.accuracy"]["passed"]  # the user's policy was applied
    assert checks["model.loads"]["passed"]
    assert checks["package.bento"]["passed"] and checks["package.image"]["skipped"]
    assert "loadtest.enabled is false" in stages["loadtest"]["reason"]
    assert "no champion yet" in stages["rollout"]["reason"]
    # everything it wrote is under MODELSHIP_HOME: the store, the Bento, the run's log
    assert (place.home / "mlflow.db").is_file()
    assert list((place.home / "bentoml" / "bentos").glob(f"modelship-{MODEL}/v1-*/bento.yaml"))
    assert _inside(Path(summary["log"]), place.home)
    # nothing in the working folder either (an experiment made without its location under
    # MODELSHIP_HOME puts the deployment run's artifacts in ./mlruns)
    written = sorted(str(p.relative_to(place.cwd)) for p in place.cwd.rglob("*"))
    assert not written, f"deploy wrote into its working folder: {written[:10]}"


# -- bad input: exit 2, a clear message, nothing written ---------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--policies", "/does/not/exist", "policy", "check", "{policy}"],
         "policy folder /does/not/exist does not exist or is not a folder"),
        (["policy", "check", "{inputs}"], "is a directory"),
        (["policy", "check", "{policy}", "--model", "../evil"],
         "model name '../evil' cannot name a policy file"),
    ],
    ids=["missing-policy-folder", "policy-is-a-folder", "model-name-with-a-path"],
)  # fmt: skip
def test_bad_input_exits_2_and_writes_nothing(
    installed: Installed, place: Place, args: list[str], message: str
) -> None:
    filled = [a.format(policy=place.inputs / "policy.yaml", inputs=place.inputs) for a in args]
    proc = modelship(installed, place, *filled)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not place.home.exists(), "a bad input wrote to MODELSHIP_HOME"
    assert not list(place.cwd.iterdir())
