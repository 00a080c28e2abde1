"""A server that answers at once except for one stall: the load generator's honesty test.

python -m tests.servers.stall PORT STALL_AT_S STALL_S
"""

from __future__ import annotations

import sys
import time

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


def main() -> None:
    port, stall_at, stall_s = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
    state = {"started": 0.0, "stall_s": stall_s}

    async def predict(request: Request) -> Response:
        await request.body()
        now = time.monotonic()
        state["started"] = state["started"] or now
        if state["stall_s"] and now - state["started"] >= stall_at:
            time.sleep(state["stall_s"])  # blocks the event loop: everything queues behind it
            state["stall_s"] = 0.0
        return Response("[]", media_type="application/json")

    async def ready(request: Request) -> Response:
        return Response("\n")

    app = Starlette(routes=[Route("/predict", predict, methods=["POST"]), Route("/readyz", ready)])
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
