"""The Bento that serves a model version: the service, its request parsing and inference log.

Everything here runs inside the Bento (and its image), so it imports only what the Bento
installs: bentoml, numpy, onnxruntime, pyarrow, pydantic. Nothing from the rest of modelship.
"""
