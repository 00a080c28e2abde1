"""The CLI's own surface: help, policy check, usage errors."""

from __future__ import annotations

from pathlib import Path

from modelship.policies.loader import DEFAULT_POLICY
from tests.support import cli


def test_help_lists_the_commands(tmp_path: Path) -> None:
    proc = cli(tmp_path, "--help")
    assert proc.returncode == 0
    for command in ("deploy", "status", "policy", "compile", "demo"):
        assert command in proc.stdout


def test_policy_check_accepts_the_default(tmp_path: Path) -> None:
    proc = cli(tmp_path, "policy", "check", str(DEFAULT_POLICY))
    assert proc.returncode == 0, proc.stderr
    assert "ok (policy hash" in proc.stdout


def test_policy_check_prints_each_error_with_its_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "validate:\n"
        "  contrat: {}\n"
        "loadtest:\n"
        "  rate: -5\n"
        "rollout:\n"
        "  steps:\n"
        "    - {weight: 50}\n"
        "    - {weight: 150}\n"
    )
    proc = cli(tmp_path, "policy", "check", str(bad))
    assert proc.returncode == 2
    assert f"{bad}:2:3 validate.contrat: unknown key" in proc.stderr
    assert f"{bad}:4:3 loadtest.rate: Input should be greater than 0" in proc.stderr
    assert f"{bad}:8:8 rollout.steps.1.weight" in proc.stderr


def test_policy_check_reports_yaml_syntax_errors(tmp_path: Path) -> None:
    bad = tmp_path / "broken.yaml"
    bad.write_text("validate:\n  metrics: [\n")
    proc = cli(tmp_path, "policy", "check", str(bad))
    assert proc.returncode == 2
    assert "not valid YAML" in proc.stderr


def test_version_and_alias_together_is_a_usage_error(tmp_path: Path) -> None:
    proc = cli(tmp_path, "deploy", "m", "--version", "1", "--alias", "champion")
    assert proc.returncode == 2
    assert "not both" in proc.stderr


def _nothing_written(home: Path) -> None:
    assert not home.exists() or not any(home.iterdir()), list(home.iterdir())


def test_a_policy_folder_that_does_not_exist_exits_2_and_writes_nothing(tmp_path: Path) -> None:
    home = tmp_path / "home"
    proc = cli(home, "--policies", str(tmp_path / "nope"), "policy", "check", str(DEFAULT_POLICY))
    assert proc.returncode == 2
    assert f"policy folder {tmp_path / 'nope'} does not exist" in proc.stderr
    assert "MODELSHIP_POLICIES" in proc.stderr
    _nothing_written(home)


def test_a_policy_file_that_is_a_directory_exits_2(tmp_path: Path) -> None:
    home = tmp_path / "home"
    proc = cli(home, "policy", "check", str(tmp_path))
    assert proc.returncode == 2
    assert "is a directory" in proc.stderr or "Is a directory" in proc.stderr
    _nothing_written(home)


def test_a_model_name_that_is_not_a_file_name_exits_2(tmp_path: Path) -> None:
    home = tmp_path / "home"
    proc = cli(home, "policy", "check", str(DEFAULT_POLICY), "--model", "../default")
    assert proc.returncode == 2
    assert "cannot name a policy file" in proc.stderr
    _nothing_written(home)


def test_per_model_policies_come_from_the_folder_named_by_the_option_or_the_env(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "policies"
    folder.mkdir()
    (folder / "m.yaml").write_text("loadtest:\n  rate: -1\n")
    ok = tmp_path / "ok.yaml"
    ok.write_text("{}\n")
    by_option = cli(tmp_path / "h1", "--policies", str(folder), "policy", "check", str(ok),
                    "--model", "m")  # fmt: skip
    by_env = cli(tmp_path / "h2", "policy", "check", str(ok), "--model", "m",
                 env={"MODELSHIP_POLICIES": str(folder)})  # fmt: skip
    shipped = cli(tmp_path / "h3", "policy", "check", str(ok), "--model", "m")
    for proc in (by_option, by_env):
        assert proc.returncode == 2 and "loadtest.rate" in proc.stderr, proc.stderr
    assert shipped.returncode == 0, shipped.stderr


def test_an_unreachable_tracking_server_exits_2_at_once_naming_it(tmp_path: Path) -> None:
    """Not after MLflow's HTTP retries (minutes): the first thing a command does is ask."""
    import time

    from modelship.core.ports import free_port

    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    started = time.monotonic()
    proc = cli(tmp_path, "status", "some-model", env={"MLFLOW_TRACKING_URI": uri}, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert f"the MLflow tracking server at {uri} does not answer" in proc.stderr
    assert "MLFLOW_TRACKING_URI" in proc.stderr  # the hint names the setting
    assert time.monotonic() - started < 60


def test_an_unreachable_object_store_exits_2_at_once_naming_it(tmp_path: Path) -> None:
    """The tracking server answers, the S3 endpoint the settings name does not: exit 2 before
    anything is read or written, not after boto3's retries."""
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    from modelship.core.ports import free_port

    class Health(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        store = f"http://127.0.0.1:{free_port()}"  # nothing listens there
        env = {"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{server.server_port}",
               "MLFLOW_S3_ENDPOINT_URL": store}  # fmt: skip
        proc = cli(tmp_path, "status", "some-model", env=env, timeout=120)
    finally:
        server.shutdown()
    assert proc.returncode == 2, proc.stderr
    assert f"the object store at {store} does not answer" in proc.stderr
    assert "MLFLOW_S3_ENDPOINT_URL" in proc.stderr


def test_deploy_and_submit_check_names_and_versions_before_anything_runs(tmp_path: Path) -> None:
    """A version of 0 or 007 (isdigit says yes), a name with a quote or a leading '-': exit 2
    naming the fault, before a store is opened or a run is created."""
    home = tmp_path / "home"
    cases = [
        (["deploy", "m", "--version", "0"], "is not a model version"),
        (["deploy", "m", "--version", "007"], "is not a model version"),
        (["deploy", "it's", "--version", "1"], "is not a model name"),
        (["deploy", "m", "--alias", "champ/ion"], "is not an alias"),
        (["submit", "m", "--version", "1e3", "--host", "http://127.0.0.1:9"], "model version"),
        (["submit", "--host", "http://127.0.0.1:9", "--", "-m"], "is not a model name"),
    ]
    for args, says in cases:
        proc = cli(home, *args)
        assert proc.returncode == 2, (args, proc.stderr)
        assert says in proc.stderr, (args, proc.stderr)
    _nothing_written(home)
