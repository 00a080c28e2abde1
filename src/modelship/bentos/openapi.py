"""The OpenAPI document of one Bento: ``/predict`` as :mod:`bentos.payload` really takes it.

BentoML's own ``/docs.json`` describes ``inputs`` as "anything" (the service's input type is
``Any``, parsed by :mod:`bentos.payload`) and its errors in BentoML's generic shape. Clients,
and the fuzzing in the tests, need the real contract: the three shapes of rows with this
model's own columns, numbers in float32's range, the row limit, and ``{"error": ...}`` for every
refusal. The service serves this document at ``/docs.json`` instead of BentoML's.
"""

from __future__ import annotations

from typing import Any

from .config import ServingConfig

#: float32's largest finite value: payload.py refuses anything beyond (it would become infinity)
FLOAT32_MAX = 3.4028234663852886e38

_ERROR = {"$ref": "#/components/schemas/Error"}


def _number() -> dict[str, Any]:
    return {"type": "number", "minimum": -FLOAT32_MAX, "maximum": FLOAT32_MAX}


def _error_response(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ERROR}}}


def _schemas(config: ServingConfig) -> dict[str, Any]:
    columns, max_rows = config.columns, config.max_rows_per_request
    records = {
        "type": "array",
        "description": "records: one object per row, keyed by column (pandas orient=records)",
        "minItems": 1,
        "maxItems": max_rows,
        "items": {
            "type": "object",
            "properties": {c: _number() for c in columns},
            "required": list(columns),
            "additionalProperties": False,
        },
    }
    columnar = {
        "type": "object",
        "description": "columns: one list per column, all of the same length (orient=list)",
        "properties": {
            c: {"type": "array", "minItems": 1, "maxItems": max_rows, "items": _number()}
            for c in columns
        },
        "required": list(columns),
        "additionalProperties": False,
    }
    rows = {
        "type": "array",
        "description": f"rows: lists of {len(columns)} numbers in the column order {columns}",
        "minItems": 1,
        "maxItems": max_rows,
        "items": {
            "type": "array",
            "minItems": len(columns),
            "maxItems": len(columns),
            "items": _number(),
        },
    }
    prediction: dict[str, Any] = {
        "type": "object",
        "properties": {
            "prediction": {"oneOf": [{"type": "number"}, {"type": "string"}]},
            "probabilities": {"type": "array", "items": {"type": "number"}},
        },
        "required": ["prediction", "probabilities"]
        if config.task == "classification"
        else ["prediction"],
    }
    if config.classes:
        prediction["properties"]["prediction"] = {"enum": list(config.classes)}
    return {
        "PredictRequest": {
            "type": "object",
            "properties": {"inputs": {"oneOf": [records, columnar, rows]}},
            "required": ["inputs"],
        },
        "Prediction": prediction,
        "Error": {
            "type": "object",
            "description": "every refusal: what is wrong and what to do about it",
            "properties": {"error": {"type": "string"}},
            "required": ["error"],
        },
    }


def document(config: ServingConfig) -> dict[str, Any]:
    """The OpenAPI 3.0 document of the Bento serving ``config``."""
    name, version = config.model_name, config.model_version
    predict = {
        "operationId": "predict",
        "summary": f"predictions of {name} v{version}, one per row",
        "parameters": [
            {
                "name": "x-request-id",
                "in": "header",
                "required": False,
                "description": "echoed back; a new one is made when absent or over 128 bytes",
                "schema": {"type": "string"},
            }
        ],
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/PredictRequest"}}
            },
        },
        "responses": {
            "200": {
                "description": "one prediction per row, in the order sent",
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "array",
                            "items": {"$ref": "#/components/schemas/Prediction"},
                        }
                    }
                },
            },
            "400": _error_response("the body is not rows this model takes; the error says why"),
            "405": _error_response("only POST"),
            "408": _error_response(
                f"the body stalled for {config.body_timeout_s:g} s before its end"
            ),
            "413": _error_response(f"the body is over {config.max_body_bytes} bytes"),
            "503": _error_response("not ready yet, or overloaded: retry"),
        },
    }
    probe = {"200": {"description": "yes"}, "503": {"description": "not yet (loading)"}}
    return {
        "openapi": "3.0.3",
        "info": {
            "title": f"modelship: {name} v{version}",
            "version": version,
            "description": f"model {name} v{version} ({config.variant}), digest "
            f"{config.model_digest}; at most {config.max_rows_per_request} rows and "
            f"{config.max_body_bytes} bytes per request",
        },
        "paths": {
            "/predict": {"post": predict},
            "/readyz": {"get": {"operationId": "readyz", "responses": probe}},
            "/healthz": {
                "get": {"operationId": "healthz", "responses": {"200": {"description": "alive"}}}
            },
            "/metrics": {
                "get": {
                    "operationId": "metrics",
                    "responses": {"200": {"description": "Prometheus text exposition"}},
                }
            },
        },
        "components": {"schemas": _schemas(config)},
    }
