"""A stand-in model server that says who it is: the gateway's tests route between two of them.

python -m tests.servers.variant PORT NAME [--status CODE] [--answer JSON [--every N --other JSON]]
                                          [--delay SECONDS]

POST /predict answers {"variant": NAME} (with CODE, 200 by default), or the JSON given as
--answer (a Bento's rows, say); with --every N, each Nth request answers --other instead, so a
challenger disagrees with the champion on a known share of requests; with --delay, each answer
waits that long. /readyz answers 200.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("name")
    parser.add_argument("--status", type=int, default=200)
    parser.add_argument("--answer", type=json.loads, help="the JSON body /predict answers")
    parser.add_argument("--every", type=int, default=0, help="each Nth answer is --other")
    parser.add_argument("--other", type=json.loads, help="the JSON body of each Nth answer")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before each answer")
    args = parser.parse_args()
    if args.every and args.other is None:
        parser.error("--every needs --other")
    answer: Any = {"variant": args.name} if args.answer is None else args.answer
    answered = 0

    async def predict(request: Request) -> Response:
        nonlocal answered
        await request.body()
        await asyncio.sleep(args.delay)
        answered += 1
        headers = {"x-request-id": request.headers.get("x-request-id", "")}
        body = args.other if args.every and answered % args.every == 0 else answer
        return JSONResponse(body, status_code=args.status, headers=headers)

    async def ready(request: Request) -> Response:
        return Response("\n")

    routes = [Route("/predict", predict, methods=["POST"]), Route("/readyz", ready)]
    uvicorn.run(Starlette(routes=routes), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
