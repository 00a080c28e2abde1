"""modelship: carries MLflow model versions through gates to production traffic."""

__version__ = "0.1.0"
