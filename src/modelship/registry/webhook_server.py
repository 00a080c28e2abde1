"""``modelship webhook serve``: the HTTP side of the MLflow webhook receiver.

Every delivery is checked (:func:`registry.webhook.check`), refused once seen, and, for a new
version or a moved ``challenger`` alias, handed to a dispatcher: a local deployment, or a
``repository_dispatch`` to GitHub so that ``.github/workflows/deploy.yml`` runs it. Logs say what
happened to each delivery and never carry the secret, the signature or a token.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict
from typing import Protocol

from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from modelship.core.errors import InputError
from modelship.core.lifeline import tied
from modelship.core.settings import Settings
from modelship.registry.audit import ACTOR_ENV
from modelship.registry.webhook import Delivery, Refused, SeenDeliveries, check, should_deploy

log = logging.getLogger("modelship.webhook")


class Dispatcher(Protocol):
    def start(self, delivery: Delivery) -> str:
        """Start the deployment of ``delivery``'s version; a line saying what was started."""
        ...


class LocalDispatcher:
    """Runs ``modelship deploy`` on this machine, one process per delivery, not waited for."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.running: list[subprocess.Popen[bytes]] = []

    def start(self, delivery: Delivery) -> str:
        self.running = [p for p in self.running if p.poll() is None]
        logs = self.settings.home / "runs"
        logs.mkdir(parents=True, exist_ok=True)
        out = logs / f"webhook-{delivery.delivery_id}.log"
        cmd = [
            sys.executable,
            "-m",
            "modelship.cli",
            "deploy",
            delivery.model,
            "--version",
            delivery.version,
            "--json",
        ]
        with out.open("w") as f:
            self.running.append(
                subprocess.Popen(
                    tied(cmd),  # ends with the receiver: an orphan deploy has no one watching
                    stdout=f,
                    stderr=subprocess.STDOUT,
                    # the audit trail names the delivery that asked for this deployment
                    env={
                        **self.settings.child_env(),
                        ACTOR_ENV: f"MLflow webhook delivery {delivery.delivery_id}",
                    },
                )
            )
        return f"local deployment of {delivery.model} v{delivery.version} (log {out})"


class GitHubDispatcher:
    """Sends ``repository_dispatch`` (type ``model-registered``) to run the deploy workflow."""

    def __init__(self, repo: str, token: str, api_url: str = "https://api.github.com") -> None:
        if not token:
            raise InputError(
                "GITHUB_TOKEN is not set",
                hint="a token with repo access starts the deploy workflow",
            )
        self.repo, self._token, self.api_url = repo, token, api_url.rstrip("/")

    def start(self, delivery: Delivery) -> str:
        body = json.dumps({
            "event_type": "model-registered",
            "client_payload": {"model": delivery.model, "version": delivery.version, "alias": delivery.alias or ""},
        }).encode()  # fmt: skip
        request = urllib.request.Request(
            f"{self.api_url}/repos/{self.repo}/dispatches", data=body, method="POST",
            headers={"Authorization": f"Bearer {self._token}", "Accept": "application/vnd.github+json",
                     "Content-Type": "application/json", "X-GitHub-Api-Version": "2022-11-28"},
        )  # fmt: skip
        try:
            with urllib.request.urlopen(request, timeout=15) as response:
                status = response.status
        except urllib.error.HTTPError as e:
            raise RuntimeError(
                f"GitHub refused the dispatch to {self.repo}: HTTP {e.code}"
            ) from None
        return f"repository_dispatch to {self.repo} (HTTP {status})"

    def __repr__(self) -> str:  # never show the token
        return f"GitHubDispatcher(repo={self.repo!r})"


class _TooLarge(Exception):
    """A body (chunked: no Content-Length said so first) went past the limit."""


async def _read_at_most(request: Request, max_bytes: int) -> bytes:
    """The body, read no further than ``max_bytes``: a chunked body has no length to check."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise _TooLarge
    return bytes(body)


def create_app(
    secret: str,
    seen: SeenDeliveries,
    dispatcher: Dispatcher,
    *,
    clock: Callable[[], float] = time.time,
    max_bytes: int = 65536,
    max_age_s: float = 300.0,
    body_timeout_s: float = 30.0,
) -> Starlette:
    if not secret:
        raise InputError(
            "no webhook secret",
            hint="set MODELSHIP_WEBHOOK_SECRET to the secret the MLflow webhook was created with",
        )

    async def receive(request: Request) -> JSONResponse:
        declared = int(request.headers.get("content-length") or 0)
        if declared > max_bytes:  # refuse before reading an oversized body
            log.warning("refused: body of %d bytes", declared)
            return JSONResponse({"error": f"body over {max_bytes} bytes"}, status_code=413)
        try:
            body = await asyncio.wait_for(_read_at_most(request, max_bytes), body_timeout_s)
        except _TooLarge:
            log.warning("refused: a chunked body over %d bytes", max_bytes)
            return JSONResponse({"error": f"body over {max_bytes} bytes"}, status_code=413)
        except TimeoutError:
            log.warning("refused: the body did not arrive within %g s", body_timeout_s)
            return JSONResponse(
                {"error": f"the body did not arrive within {body_timeout_s:g} s"}, status_code=408
            )
        except ClientDisconnect:
            log.info("the sender went away before the body was whole")
            return JSONResponse({"error": "the body ended early"}, status_code=400)
        try:
            delivery = check(
                request.headers,
                body,
                secret=secret,
                now=clock(),
                max_bytes=max_bytes,
                max_age_s=max_age_s,
            )
        except Refused as refused:
            log.warning("refused (%d): %s", refused.status, refused.reason)
            return JSONResponse({"error": refused.reason}, status_code=refused.status)
        if delivery.delivery_id in seen:
            log.warning("refused (409): delivery %s was already handled", delivery.delivery_id)
            return JSONResponse({"error": "delivery already handled"}, status_code=409)
        seen.add(delivery.delivery_id)
        what = (
            f"delivery {delivery.delivery_id} {delivery.event} {delivery.model} v{delivery.version}"
        )
        if not should_deploy(delivery):
            log.info("%s: ignored (alias %s is not deployed on)", what, delivery.alias)
            return JSONResponse(
                {"ignored": f"alias {delivery.alias} does not start a deployment"}, status_code=202
            )
        try:
            started = dispatcher.start(delivery)
        except Exception as e:  # the sender retries on 5xx
            log.error("%s: could not start: %s", what, e)
            return JSONResponse({"error": f"could not start the deployment: {e}"}, status_code=502)
        log.info("%s: started %s", what, started)
        return JSONResponse({"started": started, **asdict(delivery)}, status_code=202)

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    return Starlette(
        routes=[Route("/webhooks/mlflow", receive, methods=["POST"]), Route("/healthz", healthz)]
    )


def serve(
    settings: Settings, *, host: str, port: int, dispatch: str, github_repo: str | None
) -> None:
    import uvicorn

    secret = os.environ.get("MODELSHIP_WEBHOOK_SECRET", "")
    dispatcher: Dispatcher
    if dispatch == "github":
        if not github_repo:
            raise InputError("--github-repo OWNER/NAME is needed with --dispatch github")
        dispatcher = GitHubDispatcher(
            github_repo,
            os.environ.get("GITHUB_TOKEN", ""),
            os.environ.get("GITHUB_API_URL", "https://api.github.com"),
        )
    else:
        dispatcher = LocalDispatcher(settings)
    app = create_app(secret, SeenDeliveries(settings.home / "webhook-deliveries.txt"), dispatcher)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    log.info("listening on http://%s:%d/webhooks/mlflow, dispatching to %s", host, port, dispatch)
    uvicorn.run(app, host=host, port=port, log_level="warning")
