"""The ``modelship`` command line.

Exit codes: 0 every gate passed; 3 rejected at a gate; 2 usage or input error; 1 unexpected.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import click

from modelship.core.errors import ModelshipError, PolicyError
from modelship.core.settings import DEFAULT_SECRET, Settings

F = TypeVar("F", bound=Callable[..., Any])

EXIT_OK, EXIT_UNEXPECTED, EXIT_INPUT, EXIT_REJECTED = 0, 1, 2, 3


def _errors_to_exit_codes(func: F) -> F:
    """The boundary where modelship's errors become messages and exit codes."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except ModelshipError as e:
            click.echo(click.style("error: ", fg="red", bold=True) + str(e), err=True)
            sys.exit(e.exit_code)
        except click.ClickException:
            raise  # usage errors: click prints them and exits 2
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)
        except Exception:
            click.echo(click.style("unexpected error (a bug in modelship):", fg="red"), err=True)
            click.echo(traceback.format_exc(), err=True)
            sys.exit(EXIT_UNEXPECTED)

    return wrapper  # type: ignore[return-value]


def _check_identifiers(model: str, version: str | None, alias: str | None) -> None:
    """Names from the command line, checked before anything (a run, a path, a process) uses them."""
    from modelship.core.identifiers import check_alias, check_model_name, check_version

    check_model_name(model)
    if version:
        check_version(version)
    if alias:
        check_alias(alias)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="modelship")
@click.option(
    "--policies",
    "policy_dir",
    type=click.Path(path_type=Path),
    envvar="MODELSHIP_POLICIES",
    help="Folder of per-model policies (MODEL.yaml, optionally its own default.yaml); "
    "default: the policies shipped with modelship.  [env: MODELSHIP_POLICIES]",
)
def main(policy_dir: Path | None) -> None:
    """Carry MLflow model versions through gates to production traffic.

    The registry is MLflow's: by default an embedded SQLite store under MODELSHIP_HOME
    (./.modelship); set MLFLOW_TRACKING_URI to use a tracking server instead.
    """
    if policy_dir is not None:
        if not policy_dir.is_dir():
            click.echo(
                click.style("error: ", fg="red", bold=True)
                + f"policy folder {policy_dir} does not exist or is not a folder\n"
                "  hint: point --policies or MODELSHIP_POLICIES at a folder of MODEL.yaml files, "
                "or leave it unset for the shipped policies",
                err=True,
            )
            sys.exit(EXIT_INPUT)
        # read once here; every Settings.from_env() below and every child process sees it
        os.environ["MODELSHIP_POLICIES"] = str(policy_dir.resolve())


@main.command()
@click.argument("model")
@click.option("--version", "version", help="Version number to deploy (default: the latest).")
@click.option("--alias", help="Alias to deploy, e.g. challenger.")
@click.option(
    "--policy",
    "policy_file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Policy override YAML, merged over policies/default.yaml and policies/MODEL.yaml.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
@click.option("-v", "--verbose", is_flag=True, help="Show every check, not only failures.")
@click.option(
    "--target",
    type=click.Choice(["local", "k8s"]),
    default="local",
    show_default=True,
    help="local: the gates and a canary behind modelship's gateway on this machine; "
    "k8s: Seldon Core v2 or KServe manifests (with --dry-run).",
)
@click.option(
    "--router",
    type=click.Choice(["seldon", "kserve"]),
    help="Kubernetes router for --target k8s (default: the policy's rollout.target, else kserve).",
)
@click.option("--namespace", default="default", show_default=True, help="Kubernetes namespace.")
@click.option(
    "--dry-run", is_flag=True, help="With --target k8s: print the manifests, apply nothing."
)
@_errors_to_exit_codes
def deploy(
    model: str,
    version: str | None,
    alias: str | None,
    policy_file: Path | None,
    as_json: bool,
    verbose: bool,
    target: str,
    router: str | None,
    namespace: str,
    dry_run: bool,
) -> None:
    """Run MODEL's version through every gate, showing each stage as it runs.

    Exit code 0 when every gate passed, 3 when a gate rejected the model, 2 for bad input.
    """
    from modelship.deploy import deploy as run
    from modelship.deploy import deploy_with_view

    if version and alias:
        raise click.UsageError("give --version or --alias, not both")
    _check_identifiers(model, version, alias)
    if dry_run and target != "k8s":
        raise click.UsageError("--dry-run prints Kubernetes manifests: add --target k8s")
    settings = Settings.from_env()
    settings.prepare()
    if target == "k8s":
        from modelship.k8s import print_manifests

        if not dry_run:
            raise click.UsageError(
                "--target k8s only prints (--dry-run); to roll out on a cluster, set "
                "rollout.target: seldon or kserve (and rollout.kubernetes) in the policy and "
                "run `modelship deploy` as usual"
            )
        click.echo(
            print_manifests(
                model, version, alias, policy_file, router, namespace, policy_dir=settings.policies
            ),
            nl=False,
        )
        return
    if as_json:
        summary = run(settings, model, version=version, alias=alias, policy_file=policy_file)
        click.echo(json.dumps(summary, indent=2))
    else:
        summary = deploy_with_view(
            settings, model, version=version, alias=alias, policy_file=policy_file, verbose=verbose
        )
    sys.exit(EXIT_OK if summary["outcome"] == "passed" else EXIT_REJECTED)


@main.command()
@click.argument("model")
@click.option("--version", "version", help="Version number to deploy (default: the latest).")
@click.option("--alias", help="Alias to deploy, e.g. challenger.")
@click.option(
    "--policy",
    "policy_file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Policy override YAML on this machine; the whole effective policy is sent with the run.",
)
@click.option("--host", envvar="KFP_HOST", required=True, help="KFP endpoint (or KFP_HOST).")
@click.option("--experiment", default="modelship", show_default=True, help="KFP experiment.")
@click.option("--no-wait", is_flag=True, help="Return once the run is created.")
@click.option(
    "--timeout", default=6 * 3600, show_default=True, type=int, help="Seconds to wait for the run."
)
@click.option(
    "--monitor",
    is_flag=True,
    help="Create the drift monitor's recurring run (monitor.yaml) instead of a deployment.",
)
@click.option("--every", default="15m", show_default=True, help="With --monitor: 15m, 1h, 900.")
@click.option(
    "--service-account",
    default="modelship-pipeline",
    show_default=True,
    help="The run's Kubernetes ServiceAccount (pipelines/rbac.yaml); '' for KFP's default.",
)
@click.option("--poll", default=10.0, hidden=True, help="Seconds between looks at the run.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
@_errors_to_exit_codes
def submit(
    model: str,
    version: str | None,
    alias: str | None,
    policy_file: Path | None,
    host: str,
    experiment: str,
    no_wait: bool,
    timeout: int,
    monitor: bool,
    every: str,
    service_account: str,
    poll: float,
    as_json: bool,
) -> None:
    """Run MODEL's deployment on a Kubeflow Pipelines endpoint instead of this machine.

    Starts the compiled pipelines/deploy.yaml with caching off and the same parameters as
    `deploy`, the policy itself included; a policy with rollout.target: local is refused. Waits
    for the run and exits as `deploy` does: 0 promoted, 3 rejected, 1 failed (outcome from
    MLflow, when MLFLOW_TRACKING_URI reaches the run's server). KFP_TOKEN is the token for a
    multi-user cluster. With --monitor, creates the monitor's recurring run instead.
    """
    import os

    from modelship.pipelines import submit as kfp_submit

    if version and alias:
        raise click.UsageError("give --version or --alias, not both")
    _check_identifiers(model, version, alias)
    settings = Settings.from_env()
    token = os.environ.get("KFP_TOKEN")
    if monitor:
        recurring = kfp_submit.submit_monitor(
            host, model, kfp_submit.parse_every(every), policy_file=policy_file,
            policy_dir=settings.policies, experiment=experiment, token=token,
            service_account=service_account,
        )  # fmt: skip
        if as_json:
            click.echo(json.dumps({"model": model, "recurring_run_id": recurring.recurring_run_id,
                                   "every_s": recurring.every_s, "url": recurring.url}))  # fmt: skip
        else:
            click.echo(f"monitor of {model} every {recurring.every_s} s: {recurring.url}")
        return
    run = kfp_submit.submit(
        host, model, version=version, alias=alias, policy_file=policy_file,
        policy_dir=settings.policies, experiment=experiment, token=token,
        service_account=service_account,
    )  # fmt: skip
    record = {"model": model, "run_id": run.run_id, "host": run.host, "url": run.url,
              "experiment": run.experiment}  # fmt: skip
    if no_wait:
        click.echo(json.dumps(record) if as_json else f"started {run.url}")
        return
    click.echo(f"started {run.url}", err=True)
    settings.prepare()
    done = kfp_submit.follow(
        run, settings, token=token, timeout_s=timeout, poll_s=poll,
        say=lambda m: click.echo(m, err=True),
    )  # fmt: skip
    if as_json:
        click.echo(json.dumps({**record, "state": done.state, "outcome": done.outcome,
                               "summary": done.summary}, indent=2))  # fmt: skip
    else:
        click.echo(
            f"{model}: run {done.state.lower()}, deployment "
            + (done.outcome or "outcome unknown (MLflow has no record of this run here)")
        )
        if done.summary.get("reason"):
            click.echo(f"  {done.summary['reason']}")
        if done.summary.get("error"):
            click.echo(f"  error: {done.summary['error']}")
    sys.exit(done.exit_code)


@main.command()
@click.argument("model")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
@_errors_to_exit_codes
def status(model: str, as_json: bool) -> None:
    """Show MODEL's versions: aliases, modelship state and reason, digest."""
    from modelship.status import model_status, render_status

    settings = Settings.from_env()
    settings.prepare()
    report = model_status(model)
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        from modelship.live import make_console

        make_console().print(render_status(report))


@main.command()
@click.argument("model")
@click.option("--version", "version", help="Serve this version's Bento alone (no gateway).")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=3000, show_default=True, type=int)
@_errors_to_exit_codes
def serve(model: str, version: str | None, host: str, port: int) -> None:
    """Serve MODEL: its champion behind modelship's gateway, the previous champion kept warm.

    POST /predict with {"inputs": records | columns | rows}. The drift monitor rolls back
    through this gateway (one call, no server start). With --version, that version's Bento
    runs alone with `bentoml serve`.
    """
    import os
    import shutil

    from modelship.core.errors import InputError
    from modelship.core.tags import TAG_BENTO
    from modelship.registry.client import Registry

    settings = Settings.from_env()
    settings.prepare()
    if not version:
        from modelship.serving import serve as serve_model

        if host != "127.0.0.1":
            raise click.UsageError("the gateway listens on 127.0.0.1; use --version for --host")
        logs = settings.home / "serving" / "logs" / model
        serve_model(settings, model, port, logs, say=lambda m: click.echo(m, err=True))
        return
    registry = Registry()
    ref = registry.resolve(model, version=version)
    tag = registry.client.get_model_version(ref.name, ref.version).tags.get(TAG_BENTO)
    if not tag:
        raise InputError(
            f"{ref} has no Bento: it was not packaged",
            hint=f"run `modelship deploy {model} --version {ref.version}` first",
        )
    bentoml = shutil.which("bentoml") or str(Path(sys.executable).parent / "bentoml")
    env = settings.child_env()
    click.echo(f"serving {ref} from Bento {tag} on http://{host}:{port}", err=True)
    os.execve(bentoml, [bentoml, "serve", tag, "--host", host, "--port", str(port)], env)


@main.command()
@click.argument("model")
@click.option("--once", "mode", flag_value="once", default=True, help="One pass, then exit.")
@click.option("--watch", "mode", flag_value="watch", help="A pass every --interval seconds.")
@click.option("--interval", default=60.0, show_default=True, help="Seconds between passes.")
@click.option(
    "--policy",
    "policy_file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Policy override YAML (its monitor: section), as for deploy.",
)
@click.option("--no-report", is_flag=True, help="Skip the Evidently HTML report per window.")
@click.option("--json", "as_json", is_flag=True, help="Print the pass's windows as JSON.")
@_errors_to_exit_codes
def monitor(
    model: str, mode: str, interval: float, policy_file: Path | None, no_report: bool,
    as_json: bool,
) -> None:  # fmt: skip
    """Judge MODEL's champion on its inference log; roll back when it drifts.

    Each whole window (monitor.window) after the last pass is compared with the champion's
    reference data (Evidently's per-feature tests) and its predictions with what it predicts
    for the reference rows. monitor.consecutive_windows breaches in a row act: rollback moves
    traffic (through `modelship serve`'s gateway) and the champion alias to the previous
    champion. Reports go to MLflow (experiment modelship-monitoring).
    """
    from modelship.components.monitor.passes import monitor_once, watch

    settings = Settings.from_env()
    settings.prepare()

    def say(message: str) -> None:
        click.echo(message, err=True)

    if mode == "watch":
        watch(settings, model, policy_file, interval, not no_report, say)
        return
    result = monitor_once(settings, model, policy_file, log_reports=not no_report, say=say)
    if as_json:
        click.echo(json.dumps({
            "windows": [json.loads(w.model_dump_json()) for w in result.windows],
            "actions": result.actions,
            "waiting_rows": result.waiting_rows,
        }, indent=2))  # fmt: skip
    elif not result.windows:
        click.echo(f"no whole window yet ({result.waiting_rows} rows waiting)")


@main.group()
def rollout() -> None:
    """Follow or steer a canary rollout (status, promote, abort)."""


@rollout.command("status")
@click.argument("model")
@click.option("--json", "as_json", is_flag=True, help="Print the saved status as JSON.")
@_errors_to_exit_codes
def rollout_status(model: str, as_json: bool) -> None:
    """Show MODEL's rollout: phase, step, weights, each analysis and the history."""
    from modelship.rollouts import load_status, render_rollout

    settings = Settings.from_env()
    status = load_status(settings, model)
    if as_json:
        click.echo(status.model_dump_json(indent=2))
    else:
        from modelship.live import make_console

        make_console().print(render_rollout(status))


@rollout.command("promote")
@click.argument("model")
@click.option("--full", is_flag=True, help="Skip every remaining step and promote now.")
@click.option("--wait", default=10.0, show_default=True, help="Seconds to wait for the controller.")
@_errors_to_exit_codes
def rollout_promote(model: str, full: bool, wait: float) -> None:
    """Continue a paused rollout to its next step (or, with --full, promote at once)."""
    from modelship.rollouts import send

    click.echo(send(Settings.from_env(), model, "promote_full" if full else "promote", wait))


@rollout.command("abort")
@click.argument("model")
@click.option("--wait", default=10.0, show_default=True, help="Seconds to wait for the controller.")
@_errors_to_exit_codes
def rollout_abort(model: str, wait: float) -> None:
    """Send every request to the champion now; the challenger is tagged rolled_back."""
    from modelship.rollouts import send

    click.echo(send(Settings.from_env(), model, "abort", wait))


@main.command()
@click.argument("model")
@click.option("--json", "as_json", is_flag=True, help="Print the entries as JSON lines.")
@click.option("--verify", is_flag=True, help="Check the hash chain; exit 1 if it is broken.")
@_errors_to_exit_codes
def audit(model: str, as_json: bool, verify: bool) -> None:
    """Every change to what serves MODEL, oldest first: who asked, what moved, under which
    policy. Each entry holds the hash of the one before (--verify checks the chain)."""
    from mlflow import MlflowClient

    from modelship.registry.audit import AuditTrail
    from modelship.registry.audit import verify as check

    settings = Settings.from_env()
    settings.prepare()
    trail = AuditTrail(MlflowClient(), settings, model)
    entries = trail.entries()
    if as_json:
        for entry in entries:
            click.echo(json.dumps(entry, sort_keys=True))
    else:
        for e in entries:
            detail = ", ".join(f"{k}={v}" for k, v in sorted(e.get("detail", {}).items()))
            version = f"v{e['version']}" if e.get("version") else "-"
            click.echo(f"{e['seq']:>4}  {e['at']}  {e['action']:<22} {version:<6} "
                       f"{e['actor']}" + (f"  ({detail})" if detail else ""))  # fmt: skip
        if not entries:
            click.echo(f"no audit entries for {model}", err=True)
    if verify:
        problems = check(entries, trail.head())
        for p in problems:
            click.echo(f"entry {p.seq}: {p.what}", err=True)
        if problems:
            raise SystemExit(1)
        click.echo(f"the chain of {len(entries)} entries is intact", err=True)


@main.command()
@click.option("--model", "models", multiple=True, help="Watch only this model (repeatable).")
@click.option("--interval", default=10.0, show_default=True, help="Seconds between polls.")
@click.option("--once", is_flag=True, help="Poll once and exit (for cron or a KFP recurring run).")
@_errors_to_exit_codes
def watch(models: tuple[str, ...], interval: float, once: bool) -> None:
    """Poll the registry for new versions and alias moves; deploy each one.

    For stores without webhooks. New versions, a moved `challenger` alias and a legacy move to
    Staging each start one `modelship deploy`. What was handled is kept in
    MODELSHIP_HOME/watcher-cursor.json, so a restarted watcher does not deploy anything twice;
    its first poll only records what is already there.
    """
    from modelship.watch import watch_registry

    settings = Settings.from_env()
    settings.prepare()
    watch_registry(settings, list(models) or None, interval=interval, once=once)


@main.group()
def webhook() -> None:
    """Receive MLflow registry webhooks and start deployments from them."""


@webhook.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8787, show_default=True, type=int)
@click.option(
    "--dispatch",
    type=click.Choice(["local", "github"]),
    default="local",
    show_default=True,
    help="Deploy on this machine, or send repository_dispatch to run .github/workflows/deploy.yml.",
)
@click.option("--github-repo", help="OWNER/NAME for --dispatch github (token from GITHUB_TOKEN).")
@_errors_to_exit_codes
def webhook_serve(host: str, port: int, dispatch: str, github_repo: str | None) -> None:
    """Serve POST /webhooks/mlflow for model_version.created and model_version_alias.created.

    Deliveries must carry MLflow's HMAC signature made with MODELSHIP_WEBHOOK_SECRET and a
    timestamp under 5 minutes old; each delivery id is acted on once.
    """
    from modelship.registry.webhook_server import serve

    settings = Settings.from_env()
    settings.prepare()
    serve(settings, host=host, port=port, dispatch=dispatch, github_repo=github_repo)


@webhook.command("register")
@click.argument("url")
@click.option("--name", default="modelship", show_default=True, help="Webhook name in MLflow.")
@_errors_to_exit_codes
def webhook_register(url: str, name: str) -> None:
    """Create the MLflow webhook that sends new versions and aliases to URL.

    Signed with MODELSHIP_WEBHOOK_SECRET. Needs a tracking server (MLFLOW_TRACKING_URI); the
    embedded SQLite store has no webhooks: use `modelship watch` there.
    """
    import os

    from mlflow import MlflowClient

    from modelship.core.errors import InputError

    secret = os.environ.get("MODELSHIP_WEBHOOK_SECRET", "")
    if not secret:
        raise InputError(
            "MODELSHIP_WEBHOOK_SECRET is not set", hint="the receiver checks signatures with it"
        )
    settings = Settings.from_env()
    settings.prepare()
    hook = MlflowClient().create_webhook(
        name=name, url=url, secret=secret,
        events=["model_version.created", "model_version_alias.created"],
    )  # fmt: skip
    click.echo(f"webhook {hook.webhook_id} sends new versions and aliases to {url}")


@main.group()
def policy() -> None:
    """Work with policy files."""


@policy.command("check")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--model", help="Also merge policies/MODEL.yaml under FILE, as deploy would.")
@_errors_to_exit_codes
def policy_check(file: Path, model: str | None) -> None:
    """Validate FILE (merged over policies/default.yaml); print each error with its place."""
    from modelship.policies.loader import load_policy

    try:
        loaded = load_policy(model, file, policy_dir=Settings.from_env().policies)
    except PolicyError as e:
        click.echo(f"{file}: {e.message}", err=True)
        for place, message in e.errors:
            click.echo(f"  {place}: {message}", err=True)
        if e.hint:
            click.echo(f"  hint: {e.hint}", err=True)
        sys.exit(EXIT_INPUT)
    click.echo(f"{file}: ok (policy hash {loaded.digest})")


@main.command("compile")
@click.option(
    "--out",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path("pipelines"),
    show_default=True,
    help="Folder for the YAML files (in a checkout, the repository's pipelines/ folder).",
)
@click.option(
    "--image",
    help="Image every task runs: your pushed modelship image, by digest where you have it "
    "(REGISTRY/modelship@sha256:...); default: the one the components name.",
)
@click.option(
    "--secret",
    default=DEFAULT_SECRET,
    show_default=True,
    help="Kubernetes Secret every task reads its settings from (MLFLOW_TRACKING_URI, the object "
    "store's and the image registry's credentials: docs/kubernetes.md).",
)
@click.option(
    "--no-secret", is_flag=True, help="Compile without a Secret (settings come some other way)."
)
@_errors_to_exit_codes
def compile_(out: Path, image: str | None, secret: str, no_secret: bool) -> None:
    """Compile every pipeline to KFP IR YAML, for upload to the Kubeflow Pipelines UI."""
    from modelship.pipelines.compile import compile_all

    for path in compile_all(out, image, None if no_secret else secret):
        click.echo(f"wrote {path}")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the summaries as JSON on stdout.")
@_errors_to_exit_codes
def demo(as_json: bool) -> None:
    """Train and register demo models on scikit-learn's bundled data, then deploy each in turn.

    v1 is good, v2 better, v3 degraded: v3 is rejected at the validation gate.
    """
    from modelship.demo import run_demo

    settings = Settings.from_env()
    settings.prepare()
    summaries = run_demo(settings)
    if as_json:
        click.echo(json.dumps(summaries, indent=2))


if __name__ == "__main__":
    main()
