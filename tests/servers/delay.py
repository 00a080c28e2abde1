"""A hop in front of a real model server that adds a fixed delay: a version made slower.

python -m tests.servers.delay PORT UPSTREAM_URL DELAY_MS

POST /predict waits DELAY_MS, then forwards to UPSTREAM_URL and returns its answer as it is;
GET /readyz forwards at once. The canary tests put one in front of each version (0 ms for the
champion), so both pay the same hop and only the delay tells them apart.
"""

from __future__ import annotations

import asyncio
import sys

import aiohttp
from aiohttp import web


def main() -> None:
    port, upstream, delay_s = int(sys.argv[1]), sys.argv[2].rstrip("/"), float(sys.argv[3]) / 1e3
    session: dict[str, aiohttp.ClientSession] = {}

    async def start(app: web.Application) -> None:
        session["s"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256))

    async def stop(app: web.Application) -> None:
        await session["s"].close()

    async def forward(request: web.Request) -> web.Response:
        body = await request.read()
        if request.path == "/predict" and delay_s:
            await asyncio.sleep(delay_s)
        headers = {"content-type": request.headers.get("content-type", "application/json")}
        async with session["s"].request(
            request.method, upstream + request.path_qs, data=body, headers=headers
        ) as answer:
            payload = await answer.read()
            kept = {k: v for k in ("content-type",) if (v := answer.headers.get(k))}
            return web.Response(body=payload, status=answer.status, headers=kept)

    app = web.Application()
    app.on_startup.append(start)
    app.on_cleanup.append(stop)
    app.router.add_post("/predict", forward)
    app.router.add_get("/readyz", forward)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


if __name__ == "__main__":
    main()
