"""Data, not code: the compiled KFP IR of each pipeline, installed as ``modelship.assets.pipelines``.

``modelship compile`` writes them from ``modelship.pipelines`` (src/modelship/pipelines/); upload
``deploy.yaml`` or ``monitor.yaml`` to a Kubeflow Pipelines UI as they are.
"""
