"""modelship's local traffic gateway: one HTTP front for a model's champion and challenger.

It splits requests by weight (sticky per key when asked), mirrors a share to the challenger,
ejects a backend that fails its health checks, counts every request per variant, and takes
new weights from an authenticated admin API. The rollout controller drives it through
:class:`components.rollout.router.TrafficRouter`; Seldon Core v2 and KServe do the same job on
Kubernetes.
"""
