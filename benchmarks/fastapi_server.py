"""A plain FastAPI server around the native model, as a team would write one by hand.

    python benchmarks/fastapi_server.py MODEL_URI PORT

Loads the MLflow model with its own flavor (scikit-learn), answers ``{"inputs": [records]}``
with predict_proba. Used by benchmarks/serving.py.
"""

from __future__ import annotations

import sys
from typing import Any

import mlflow.sklearn
import pandas as pd
import uvicorn
from fastapi import FastAPI
from fastapi.responses import PlainTextResponse


def main() -> None:
    uri, port = sys.argv[1], int(sys.argv[2])
    model = mlflow.sklearn.load_model(uri)
    app = FastAPI()

    @app.post("/predict")
    def predict(body: dict[str, Any]) -> list[dict[str, Any]]:
        frame = pd.DataFrame(body["inputs"])
        scores = model.predict_proba(frame)
        return [{"prediction": int(s.argmax()), "probabilities": s.tolist()} for s in scores]

    @app.get("/readyz", response_class=PlainTextResponse)
    def ready() -> str:
        return "\n"

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
