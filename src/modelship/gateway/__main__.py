"""``python -m modelship.gateway``: run the traffic gateway in front of a champion (and a challenger)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys

from aiohttp import web

from modelship.core.clientfaults import one_line
from modelship.core.settings import GATEWAY_TOKEN_ENV
from modelship.gateway.app import Backend, GatewayConfig, create_app

TOKEN_ENV = GATEWAY_TOKEN_ENV


def _backend(spec: str) -> Backend:
    url, _, version = spec.partition("@v")
    return Backend(url.rstrip("/"), version)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m modelship.gateway",
        description="modelship's traffic gateway: weights, mirroring, ejection, /metrics. "
        f"The admin API takes 'Authorization: Bearer ${TOKEN_ENV}'.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--champion", required=True, help="URL[@vVERSION] of the champion")
    parser.add_argument("--challenger", help="URL[@vVERSION] of the challenger")
    parser.add_argument("--sticky-header", help="header that keeps a user on one variant")
    parser.add_argument("--health-interval", type=float, default=0.5, help="seconds")
    parser.add_argument("--eject-after", type=int, default=2, help="failed checks")
    parser.add_argument(
        "--body-timeout", type=float, default=30.0, help="seconds a request body may take (408)"
    )
    args = parser.parse_args(argv)
    token = os.environ.get(TOKEN_ENV, "")
    if not token:
        print(f"error: set {TOKEN_ENV} to the admin API's token", file=sys.stderr)
        return 2
    config = GatewayConfig(
        token=token,
        champion=_backend(args.champion),
        challenger=_backend(args.challenger) if args.challenger else None,
        sticky_header=args.sticky_header,
        health_interval_s=args.health_interval,
        eject_after=args.eject_after,
        body_timeout_s=args.body_timeout,
    )
    # one line per event (a client that left, say) on stderr, where the process' log goes
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    one_line()  # a malformed request line or header: one line, not aiohttp's traceback
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    web.run_app(
        create_app(config),
        host=args.host,
        port=args.port,
        access_log=None,
        print=None,
        shutdown_timeout=10.0,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
