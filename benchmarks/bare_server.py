"""The ceiling: Starlette + uvicorn + one ONNX Runtime session, nothing else.

    python benchmarks/bare_server.py MODEL.onnx PORT

Takes ``{"inputs": [[...], ...]}`` (rows) and answers the probabilities, as the modelship Bento
does, with no validation, batching, metrics or log. Used by benchmarks/package.py.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import onnxruntime as ort
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


def main() -> None:
    model, port = sys.argv[1], int(sys.argv[2])
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])

    async def predict(request: Request) -> Response:
        rows = json.loads(await request.body())["inputs"]
        scores = session.run(None, {"input": np.asarray(rows, np.float32)})[1]
        body = [{"prediction": int(np.argmax(s)), "probabilities": s.tolist()} for s in scores]
        return Response(json.dumps(body), media_type="application/json")

    async def ready(request: Request) -> Response:
        return Response("\n")

    app = Starlette(routes=[Route("/predict", predict, methods=["POST"]), Route("/readyz", ready)])
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
