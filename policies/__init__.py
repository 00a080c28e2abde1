"""Data, not code: the shipped policies, installed as ``modelship.assets.policies``.

``default.yaml`` is the base every policy merges over; ``MODEL.yaml`` overrides it for one model.
Code that validates and loads them is ``modelship.policies`` (src/modelship/policies/).
"""
