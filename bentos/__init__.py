"""Data, not code: the Containerfile of a Bento's image, installed as ``modelship.assets.bentos``.

The service itself is ``modelship.bentos`` (src/modelship/bentos/).
"""
