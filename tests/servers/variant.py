"""A stand-in model server that says who it is: the gateway's tests route between two of them.

python -m tests.servers.variant PORT NAME [--status CODE]

POST /predict answers {"variant": NAME} (with CODE, 200 by default); /readyz answers 200.
"""

from __future__ import annotations

import argparse

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
    args = parser.parse_args()

    async def predict(request: Request) -> Response:
        await request.body()
        headers = {"x-request-id": request.headers.get("x-request-id", "")}
        return JSONResponse({"variant": args.name}, status_code=args.status, headers=headers)

    async def ready(request: Request) -> Response:
        return Response("\n")

    routes = [Route("/predict", predict, methods=["POST"]), Route("/readyz", ready)]
    uvicorn.run(Starlette(routes=routes), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
